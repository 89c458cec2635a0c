"""The wizard as a real uvicorn process on 127.0.0.1: full flows, and skew answered 4xx."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from skewless.demo import pages
from skewless.demo.forms import fill, first_form

Wizard = Callable[[str], str]


def _start(client: httpx.Client, base: str) -> None:
    r = client.post(f"{base}/start")
    assert r.status_code == 303 and r.headers["location"] == "/signup/1"
    assert "wizard_session" in client.cookies


def _submit_page(client: httpx.Client, shown_by: str, posted_to: str, step: int) -> httpx.Response:
    page = client.get(f"http://{shown_by}/signup/{step}")
    assert page.status_code == 200, page.text
    form = first_form(page.text)
    assert form is not None and form.action == f"/signup/{step}"
    return client.post(f"http://{posted_to}{form.action}", data=fill(form, user=1, session=step))


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_full_flow_on_one_version(wizard: Wizard, version: str) -> None:
    addr = wizard(version)
    with httpx.Client() as client:
        landing = client.get(f"http://{addr}/")
        assert landing.headers["x-app-version"] == version
        _start(client, f"http://{addr}")
        for step in (1, 2, 3):
            page = client.get(f"http://{addr}/signup/{step}")
            form = first_form(page.text)
            assert form is not None
            assert tuple(f.name for f in form.fields) == pages.layout(version).page(step)
            r = client.post(f"http://{addr}{form.action}", data=fill(form, user=1, session=1))
            assert r.status_code == 303, r.text
        assert r.headers["location"] == "/done"
        done = client.get(f"http://{addr}/done")
        assert done.status_code == 200 and "Welcome aboard" in done.text
        assert first_form(done.text) is None
        described = client.get(f"http://{addr}/form.json").json()
        assert [p["fields"] for p in described["pages"]] == [
            list(p) for p in pages.layout(version).pages
        ]


def test_a_session_begun_on_v1_and_continued_on_v2_fails_detectably(wizard: Wizard) -> None:
    v1, v2 = wizard("v1"), wizard("v2")
    with httpx.Client() as client:
        _start(client, f"http://{v1}")
        assert _submit_page(client, v1, v1, 1).status_code == 303
        # John fills page 2 of v1; "next" reaches v2, which moved country to page 3.
        r = _submit_page(client, v1, v2, 2)
        assert r.status_code == 422
        assert r.headers["x-app-version"] == "v2"
        assert "country" in r.text

    with httpx.Client() as client:  # page 2 done on v1, page 3 shown and posted by v2
        _start(client, f"http://{v1}")
        assert _submit_page(client, v1, v1, 1).status_code == 303
        assert _submit_page(client, v1, v1, 2).status_code == 303
        r = _submit_page(client, v2, v2, 3)
        assert r.status_code == 409
        assert "already answered elsewhere: country" in r.text


def test_the_store_is_shared_so_page_1_may_move_between_versions(wizard: Wizard) -> None:
    v1, v2 = wizard("v1"), wizard("v2")
    with httpx.Client() as client:
        _start(client, f"http://{v1}")
        assert _submit_page(client, v1, v1, 1).status_code == 303
        for step in (2, 3):
            assert _submit_page(client, v2, v2, step).status_code == 303
        assert client.get(f"http://{v2}/done").status_code == 200


def test_out_of_order_and_cookieless_posts_are_409(wizard: Wizard) -> None:
    addr = wizard("v1")
    with httpx.Client() as client:
        r = client.post(f"http://{addr}/signup/1", data={"full_name": "J", "email": "j@x"})
        assert r.status_code == 409
        _start(client, f"http://{addr}")
        r = client.post(f"http://{addr}/signup/2", data={"company": "A"})
        assert r.status_code == 409 and "on page 1" in r.text
        # A GET of another page sends the browser to the current one.
        r = client.get(f"http://{addr}/signup/3")
        assert r.status_code == 303 and r.headers["location"] == "/signup/1"


def test_health_and_version_header_on_every_response(wizard: Wizard) -> None:
    addr = wizard("v3")
    r = httpx.get(f"http://{addr}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "version": "v3"}
    missing = httpx.get(f"http://{addr}/nope")
    assert missing.status_code == 404 and missing.headers["x-app-version"] == "v3"


def test_bad_version_exits_2_naming_the_flag() -> None:
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.run(
        [sys.executable, "-m", "skewless.demo.wizard", "--port", "0", "--version", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert proc.returncode == 2
    assert "--version must look like v1" in proc.stderr
    assert "Traceback" not in proc.stderr
