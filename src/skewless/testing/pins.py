"""Test helpers for pins: run a test module with each pin-check implementation.

Import the fixture into a test module to run each of its tests twice, with the C check
of ``skewless._pinfast`` and with the pure-Python code (skipped when the C accelerator
is not built)::

    from skewless.testing.pins import pin_implementation  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

import skewless.core.pin


@pytest.fixture(scope="module", autouse=True, params=["c", "python"])
def pin_implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test twice: with the C check of ``skewless._pinfast`` and without it."""
    if request.param == "c" and skewless.core.pin._pinfast is None:
        pytest.skip(
            "C accelerator skewless._pinfast not built (python setup.py build_ext --inplace)"
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(skewless.core.pin, "ACCELERATED", request.param == "c")
        yield request.param


def tamper(draw: Callable[[Any], Any], token: bytes, edits: Sequence[str]) -> bytes:
    """``token`` with one edit drawn from ``edits`` (Hypothesis' ``draw``): "none",
    "flip", "insert", "delete", "cut", "pad", "nul" or "dots"."""
    from hypothesis import strategies as st

    edit = draw(st.sampled_from(list(edits)))
    if edit == "none" or not token:
        return token
    i = draw(st.integers(0, len(token) - 1))
    b = draw(st.integers(0, 255)).to_bytes(1, "big")
    if edit == "flip":
        return token[:i] + b + token[i + 1 :]
    if edit == "insert":
        return token[:i] + b + token[i:]
    if edit == "delete":
        return token[:i] + token[i + 1 :]
    if edit == "cut":
        return token[:i]
    if edit == "nul":
        return token[:i] + b"\0" + token[i:]
    if edit == "dots":
        return token[:i] + b"." * draw(st.integers(1, 600)) + token[i:]
    return token + b"A" * draw(st.sampled_from([1, 500, 8000]))
