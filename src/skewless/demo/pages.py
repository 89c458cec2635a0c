"""What each version of the sign-up wizard asks, and the checks that make skew visible.

The wizard has three pages. Page 1 (name, email) and the tail of page 3 (plan,
newsletter) never change; two fields, ``role`` and ``country``, *move* from page 2 to
page 3 as versions go by:

    v1   page 2: company, role, country    page 3: plan, newsletter
    v2   page 2: company, role             page 3: country, plan, newsletter
    v3   page 2: company                   page 3: role, country, plan, newsletter

``v4`` has v1's layout again, ``v5`` v2's and so on, so that any two consecutive
versions differ (the release benchmark runs five releases in a row).

A step is accepted only when (a) the posted fields are exactly the fields this version's
page asks for, and (b) the stored sign-up holds exactly the fields this version's earlier
pages collect. A session begun on one version and continued on the next therefore fails
one of the two checks on page 2 or page 3: the broken experience answers 422 or 409
instead of silently asking John for his country twice.

Everything here is pure: the HTTP layer (``wizard.py``) and the store (``store.py``) call it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PAGES = 3


@dataclass(frozen=True, kw_only=True)
class Field:
    name: str
    label: str
    kind: str
    """``text``, ``email`` or ``select``."""
    options: tuple[str, ...] = ()


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field(name="full_name", label="Full name", kind="text"),
        Field(name="email", label="Email", kind="email"),
        Field(name="company", label="Company", kind="text"),
        Field(
            name="role", label="Role", kind="select", options=("engineer", "designer", "manager")
        ),
        Field(name="country", label="Country", kind="select", options=("DE", "FR", "JP", "US")),
        Field(name="plan", label="Plan", kind="select", options=("free", "team", "enterprise")),
        Field(name="newsletter", label="Newsletter", kind="select", options=("no", "yes")),
    )
}

_MOVABLE = ("role", "country")
_TITLES = {1: "Who are you?", 2: "About your work", 3: "Your plan"}
_VERSION_RE = re.compile(r"^v([1-9][0-9]{0,5})$")


@dataclass(frozen=True, kw_only=True)
class Layout:
    version: str
    pages: tuple[tuple[str, ...], ...]
    """Field names of pages 1..3 (index 0 is page 1)."""

    def page(self, step: int) -> tuple[str, ...]:
        return self.pages[step - 1]

    def collected_before(self, step: int) -> frozenset[str]:
        """The fields pages ``1 .. step-1`` of this version collect."""
        return frozenset(name for page in self.pages[: step - 1] for name in page)

    def title(self, step: int) -> str:
        return _TITLES[step]


def layout(version: str) -> Layout:
    """The layout of ``version`` (``v1``, ``v2``, ...); raises ``ValueError`` naming the fix."""
    match = _VERSION_RE.match(version)
    if match is None:
        raise ValueError(f"--version must look like v1, v2, v3 ... (got {version!r})")
    on_page_2 = 2 - (int(match.group(1)) - 1) % 3
    return Layout(
        version=version,
        pages=(
            ("full_name", "email"),
            ("company", *_MOVABLE[:on_page_2]),
            (*_MOVABLE[on_page_2:], "plan", "newsletter"),
        ),
    )


@dataclass(frozen=True, kw_only=True)
class StepProblem:
    status: int
    """422: the posted fields are wrong; 409: the stored sign-up does not fit this page."""
    message: str


def check_step(
    page: Layout, step: int, posted: dict[str, str], collected: dict[str, str]
) -> StepProblem | None:
    """Why ``posted`` (the form of page ``step``) cannot be accepted, or None if it can."""
    asked = frozenset(page.page(step))
    got = frozenset(posted)
    unexpected = sorted(got - asked)
    missing = sorted(asked - got)
    if unexpected or missing:
        parts = []
        if unexpected:
            parts.append(f"fields this page does not ask for: {', '.join(unexpected)}")
        if missing:
            parts.append(f"missing fields: {', '.join(missing)}")
        return StepProblem(
            status=422,
            message=f"page {step} of form {page.version} got "
            + "; ".join(parts)
            + " (the form changed while you were filling it: start over)",
        )
    empty = sorted(name for name in asked if not posted[name].strip())
    if empty:
        return StepProblem(status=422, message=f"please fill in: {', '.join(empty)}")
    bad = sorted(
        name for name in asked if FIELDS[name].options and posted[name] not in FIELDS[name].options
    )
    if bad:
        return StepProblem(
            status=422, message=f"choose one of the listed options for: {', '.join(bad)}"
        )
    before = page.collected_before(step)
    have = frozenset(collected)
    extra = sorted(have - before)
    lacking = sorted(before - have)
    if extra or lacking:
        parts = []
        if lacking:
            parts.append(f"earlier pages never collected: {', '.join(lacking)}")
        if extra:
            parts.append(f"already answered elsewhere: {', '.join(extra)}")
        return StepProblem(
            status=409,
            message=f"your sign-up does not fit page {step} of form {page.version}: "
            + "; ".join(parts)
            + " (the form changed while you were filling it: start over)",
        )
    return None
