"""What every thin subcommand shares: where the controller is, the token, and an HTTP
client that turns every failure into one clear line.

Resolution (BRIEF.md): the API is ``--api`` > env ``SKEWLESS_API`` > the ``api`` of
``$SKEWLESS_HOME/current.json`` (written by ``skewless up``; ``SKEWLESS_HOME`` defaults to
``~/.skewless``) > ``http://127.0.0.1:7000``. The token is ``--token`` > env
``SKEWLESS_TOKEN`` > the ``token`` of that file > none (GETs from loopback need none).
``resolve`` is pure: it takes the environment and the file's content as arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from skewless.core.errors import ClientError, ConfigError, SkewlessError, UpstreamError

DEFAULT_API = "http://127.0.0.1:7000"


@dataclass(frozen=True, kw_only=True)
class Target:
    api: str
    """Base URL of the controller, no trailing slash."""
    token: str | None
    source: str
    """Where the API URL came from, for error messages (``--api``, ``SKEWLESS_API`` ...)."""


def skewless_home(env: Mapping[str, str]) -> Path:
    home = env.get("SKEWLESS_HOME")
    return Path(home) if home else Path.home() / ".skewless"


def current_file(env: Mapping[str, str]) -> Path:
    return skewless_home(env) / "current.json"


def normalize_url(value: str, *, field: str) -> str:
    """``127.0.0.1:7000`` or ``http://127.0.0.1:7000/`` -> ``http://127.0.0.1:7000``."""
    value = value.strip()
    if not value:
        raise ConfigError(f"{field} is empty: give a URL such as http://127.0.0.1:7000")
    if "://" not in value:
        value = "http://" + value
    scheme = value.split("://", 1)[0]
    if scheme not in ("http", "https"):
        raise ConfigError(f"{field} {value!r} must be an http:// or https:// URL")
    return value.rstrip("/")


def resolve(
    *,
    api_flag: str | None,
    token_flag: str | None,
    env: Mapping[str, str],
    current: Mapping[str, Any] | None,
) -> Target:
    """Pick the controller URL and token (flag > environment > current.json > default)."""
    current = current or {}
    if api_flag:
        api, source = normalize_url(api_flag, field="--api"), "--api"
    elif env.get("SKEWLESS_API"):
        api, source = normalize_url(env["SKEWLESS_API"], field="SKEWLESS_API"), "SKEWLESS_API"
    elif isinstance(current.get("api"), str) and current["api"]:
        api, source = normalize_url(current["api"], field="current.json api"), "current.json"
    else:
        api, source = DEFAULT_API, "default"
    token: str | None
    if token_flag:
        token = token_flag
    elif env.get("SKEWLESS_TOKEN"):
        token = env["SKEWLESS_TOKEN"]
    elif isinstance(current.get("token"), str) and current["token"]:
        token = current["token"]
    else:
        token = None
    return Target(api=api, token=token, source=source)


def read_current(path: Path) -> dict[str, Any] | None:
    """The content of current.json, or None when absent or unreadable (never fatal: flags
    and the environment may still name the controller)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api",
        metavar="URL",
        help="controller API (default: $SKEWLESS_API, then the fleet `skewless up` runs)",
    )
    parser.add_argument(
        "--token", metavar="TOKEN", help="API token (default: $SKEWLESS_TOKEN, then `up`'s)"
    )


def target_from_args(args: argparse.Namespace) -> Target:
    env = os.environ
    return resolve(
        api_flag=args.api,
        token_flag=args.token,
        env=env,
        current=read_current(current_file(env)),
    )


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if body.get(key):
                detail = body[key]
                return detail if isinstance(detail, str) else json.dumps(detail)
    text = response.text.strip().splitlines()
    return text[0][:200] if text else response.reason_phrase


class Controller:
    """A small synchronous client of the controller API."""

    def __init__(self, target: Target, *, timeout: float = 10.0) -> None:
        self.target = target
        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        self._http = httpx.Client(base_url=target.api, headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        return f"<Controller {self.target.api} via {self.target.source}>"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON body (None for an empty one).

        Raises ``UpstreamError`` when the controller cannot be reached or fails (5xx),
        ``ClientError`` with the controller's own message on 4xx.
        """
        api = self.target.api
        try:
            response = self._http.request(
                method,
                path,
                params={k: v for k, v in (params or {}).items() if v is not None},
                json=body,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException:
            raise UpstreamError(
                f"controller at {api} did not answer {method} {path} in time"
            ) from None
        except httpx.TransportError as exc:
            hint = (
                "is `skewless up` running?"
                if self.target.source in ("default", "current.json")
                else f"check {self.target.source}"
            )
            raise UpstreamError(
                f"cannot reach the controller at {api} ({type(exc).__name__}): {hint}"
            ) from None
        if response.status_code in (401, 403):
            raise ClientError(
                f"controller refused {method} {path} ({response.status_code}: "
                f"{_error_message(response)}): give the right token with --token or SKEWLESS_TOKEN"
            )
        if 400 <= response.status_code < 500:
            raise ClientError(f"{_error_message(response)} ({response.status_code})")
        if response.status_code >= 500:
            raise UpstreamError(
                f"controller failed on {method} {path} ({response.status_code}: "
                f"{_error_message(response)})"
            )
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(f"controller answered {method} {path} with non-JSON") from None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, body=body, **kwargs)


def run_command(name: str, body: Callable[[], int]) -> int:
    """Run a subcommand; a ``SkewlessError`` becomes one line on stderr and exit 1."""
    try:
        return body()
    except SkewlessError as exc:
        print(f"skewless {name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
