"""The wizard's layouts and step checks (pure): skew between versions never goes unseen."""

from __future__ import annotations

import itertools

import pytest

from skewless.demo import pages


def test_fields_move_between_pages_2_and_3() -> None:
    v1, v2, v3 = (pages.layout(v) for v in ("v1", "v2", "v3"))
    assert v1.page(2) == ("company", "role", "country")
    assert v2.page(2) == ("company", "role")
    assert v3.page(3) == ("role", "country", "plan", "newsletter")
    for lay in (v1, v2, v3):
        assert lay.page(1) == ("full_name", "email")
        assert sorted(f for p in lay.pages for f in p) == sorted(pages.FIELDS)
    assert pages.layout("v4").pages == v1.pages
    assert pages.layout("v5").pages != pages.layout("v4").pages


@pytest.mark.parametrize("bad", ["1", "v0", "V1", "v1.2", "", "v01"])
def test_bad_version_is_refused_with_the_fix(bad: str) -> None:
    with pytest.raises(ValueError, match="--version must look like v1"):
        pages.layout(bad)


def _answers(names: tuple[str, ...]) -> dict[str, str]:
    return {n: (pages.FIELDS[n].options or ("x",))[0] for n in names}


def _walk(get_post: list[str]) -> int | None:
    """Walk pages 1..3: page 1 on v-first, then GET/POST of pages 2 and 3 on the given
    versions. Returns the status of the first rejected step, or None if all passed."""
    collected = _answers(pages.layout(get_post[0]).page(1))
    for step, (shown_by, posted_to) in zip((2, 3), (get_post[0:2], get_post[2:4]), strict=True):
        posted = _answers(pages.layout(shown_by).page(step))
        problem = pages.check_step(pages.layout(posted_to), step, posted, collected)
        if problem is not None:
            return problem.status
        collected |= posted
    return None


@pytest.mark.parametrize("old,new", [("v1", "v2"), ("v2", "v3"), ("v1", "v3"), ("v3", "v4")])
def test_every_switch_of_version_mid_flow_is_rejected(old: str, new: str) -> None:
    # Each of the four exchanges (GET 2, POST 2, GET 3, POST 3) on old or new version.
    for combo in itertools.product((old, new), repeat=4):
        status = _walk(list(combo))
        if len(set(combo)) == 1:
            assert status is None, combo
        else:
            assert status in (409, 422), combo


def test_same_version_flow_passes_and_records_nothing_extra() -> None:
    lay = pages.layout("v2")
    assert pages.check_step(lay, 1, _answers(lay.page(1)), {}) is None
    assert _walk(["v2"] * 4) is None


def test_empty_and_unknown_option_values_are_422_naming_the_field() -> None:
    lay = pages.layout("v1")
    problem = pages.check_step(lay, 1, {"full_name": " ", "email": "a@b"}, {})
    assert problem is not None and problem.status == 422 and "full_name" in problem.message
    posted = {"company": "ACME", "role": "pilot", "country": "DE"}
    collected = _answers(lay.page(1))
    problem = pages.check_step(lay, 2, posted, collected)
    assert problem is not None and problem.status == 422 and "role" in problem.message
