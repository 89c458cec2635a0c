"""Pins: a session's version, carried by the client in a signed token.

Theory of operation
-------------------
A pin is an ASCII token, the same in the cookie and in the header form::

    s1.KID.SID.IAT.SEEN.VERSION.SIG

``s1`` is the format; ``KID`` the id of the key that signed it; ``SID`` a random session
id (16 url-safe characters); ``IAT`` when the session was first pinned and ``SEEN`` when
this token was issued (unix seconds, decimal); ``VERSION`` the app version (it may
contain dots, hence it is last but one); ``SIG`` is base64url(HMAC-SHA256(secret,
APP "\\n" everything before the last dot)). Binding the app name into the MAC means a pin
for one app is worthless for another.

A pin is *valid* when it parses, its key id is known, its MAC matches, ``SEEN`` is within
``idle_timeout`` of now (sliding idle expiry), ``IAT`` is within ``max_lifetime`` of now
(absolute cap) and neither lies in the future beyond a small clock skew. Anything else,
including 8 KiB of junk, is *absent*: the caller assigns a new pin by weight. Nothing the
client writes can name a version: the version is covered by the MAC.

The router re-issues a valid pin (same ``SID`` and ``IAT``, new ``SEEN``) once it is
``refresh_after`` seconds old, so the idle expiry slides with activity while signing
stays rare. Verified tokens are kept in a bounded cache, so a pin already seen costs a
dict lookup and an expiry check, not an HMAC. Rotating keys builds a new ``PinCodec``
(and so an empty cache): a pin signed by a removed key stops being trusted at once.

Keys file: one ``KEY_ID:SECRET`` a line; the first line signs, every line verifies.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from dataclasses import dataclass

from skewless.core.errors import ConfigError

FORMAT = b"s1"
MAX_TOKEN = 512
"""Longer tokens are rejected before any parsing (8 KiB of junk costs a len())."""
CLOCK_SKEW = 60
CACHE_SIZE = 65536
KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
MIN_SECRET = 16


@dataclass(frozen=True, kw_only=True)
class SigningKey:
    key_id: str
    secret: bytes

    def __repr__(self) -> str:  # never print a secret
        return f"SigningKey(key_id={self.key_id!r}, secret=<{len(self.secret)} bytes>)"


@dataclass(frozen=True, kw_only=True)
class Keyring:
    keys: tuple[SigningKey, ...]
    """The first key signs; every key verifies."""


def parse_keys(text: str, source: str = "keys") -> Keyring:
    """Parse a keys file (``KEY_ID:SECRET`` a line; ``#`` comments and blank lines skipped)."""
    keys: list[SigningKey] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key_id, sep, secret = line.partition(":")
        where = f"{source} line {number}"
        if not sep:
            raise ConfigError(f"{where}: expected KEY_ID:SECRET (no ':' found)")
        if not KEY_ID_RE.match(key_id):
            raise ConfigError(
                f"{where}: key id must be 1-32 letters, digits, _ or - (got {key_id!r})"
            )
        if len(secret) < MIN_SECRET:
            raise ConfigError(
                f"{where}: secret of key {key_id!r} must be at least {MIN_SECRET} characters "
                f"(got {len(secret)}); generate one with: openssl rand -hex 32"
            )
        if any(k.key_id == key_id for k in keys):
            raise ConfigError(f"{where}: key id {key_id!r} appears twice")
        keys.append(SigningKey(key_id=key_id, secret=secret.encode()))
    if not keys:
        raise ConfigError(f"{source}: no key found: add a line KEY_ID:SECRET")
    return Keyring(keys=tuple(keys))


@dataclass(frozen=True, kw_only=True, slots=True)
class Pin:
    app: str
    key_id: str
    session_id: str
    version: str
    issued_at: int
    """When the session was first pinned (the absolute cap counts from here)."""
    seen_at: int
    """When this token was issued (the idle expiry counts from here)."""
    token: bytes


def _mac(secret: bytes, app: bytes, body: bytes) -> bytes:
    digest = hmac.digest(secret, app + b"\n" + body, "sha256")
    return base64.urlsafe_b64encode(digest)[:43]


class PinCodec:
    """Signs and verifies pins with one keyring; caches tokens already verified.

    Pure (no I/O) but not frozen: the cache is its only state.
    """

    __slots__ = ("_cache", "_signer", "_verifiers", "keyring")

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._signer = keyring.keys[0]
        self._verifiers = {k.key_id.encode(): k.secret for k in keyring.keys}
        self._cache: dict[bytes, Pin] = {}

    def __repr__(self) -> str:
        ids = [k.key_id for k in self.keyring.keys]
        return f"PinCodec(keys={ids}, cached={len(self._cache)})"

    def issue(
        self,
        app: str,
        version: str,
        now: float,
        *,
        session_id: str | None = None,
        issued_at: int | None = None,
    ) -> Pin:
        """A new pin for ``version`` (a new session unless ``session_id`` is given)."""
        sid = session_id if session_id is not None else secrets.token_urlsafe(12)
        seen = int(now)
        iat = seen if issued_at is None else issued_at
        kid = self._signer.key_id
        body = f"s1.{kid}.{sid}.{iat}.{seen}.{version}".encode()
        token = body + b"." + _mac(self._signer.secret, app.encode(), body)
        pin = Pin(
            app=app,
            key_id=kid,
            session_id=sid,
            version=version,
            issued_at=iat,
            seen_at=seen,
            token=token,
        )
        self._remember(token, pin)
        return pin

    def refresh(self, pin: Pin, now: float) -> Pin:
        """The same session and version, with the idle expiry restarted at ``now``."""
        return self.issue(
            pin.app, pin.version, now, session_id=pin.session_id, issued_at=pin.issued_at
        )

    def verify(
        self, app: str, token: bytes, now: float, idle_timeout: float, max_lifetime: float
    ) -> Pin | None:
        """The pin ``token`` carries for ``app``, or None if it fails verification."""
        if len(token) > MAX_TOKEN:
            return None
        pin = self._cache.get(token)
        if pin is None:
            pin = self._check(app, token)
            if pin is None:
                return None
            self._remember(token, pin)
        elif pin.app != app:
            return None
        if (
            now - pin.seen_at > idle_timeout
            or now - pin.issued_at > max_lifetime
            or pin.seen_at > now + CLOCK_SKEW
        ):
            return None
        return pin

    def _remember(self, token: bytes, pin: Pin) -> None:
        cache = self._cache
        if len(cache) >= CACHE_SIZE:
            cache.clear()  # cheap and bounded; live sessions re-verify once
        cache[token] = pin

    def _check(self, app: str, token: bytes) -> Pin | None:
        if not token.isascii():
            return None
        dot = token.rfind(b".")
        if dot < 0:
            return None
        body = token[:dot]
        parts = body.split(b".", 5)
        if len(parts) != 6 or parts[0] != FORMAT:
            return None
        secret = self._verifiers.get(parts[1])
        if secret is None:
            return None
        if not hmac.compare_digest(_mac(secret, app.encode(), body), token[dot + 1 :]):
            return None
        iat, seen = parts[3], parts[4]
        # The MAC makes these ours, but a leaked key must not crash the router either.
        if not (iat.isdigit() and seen.isdigit() and len(iat) <= 12 and len(seen) <= 12):
            return None
        issued_at, seen_at = int(iat), int(seen)
        if seen_at < issued_at:
            return None
        return Pin(
            app=app,
            key_id=parts[1].decode(),
            session_id=parts[2].decode(),
            version=parts[5].decode(),
            issued_at=issued_at,
            seen_at=seen_at,
            token=token,
        )


def needs_refresh(pin: Pin, now: float, idle_timeout: float) -> bool:
    """Re-issue once a token is a tenth of the idle timeout old (at most every minute)."""
    return now - pin.seen_at >= min(60.0, idle_timeout / 10.0)


def cookie_max_age(pin: Pin, now: float, idle_timeout: float, max_lifetime: float) -> int:
    """Seconds the browser should keep the cookie: the sooner of idle and absolute expiry."""
    left = min(pin.seen_at + idle_timeout, pin.issued_at + max_lifetime) - now
    return max(0, int(left))


def find_cookie(header: bytes, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a ``Cookie`` header value, or None.

    Matches whole names only (``xskewless-shop`` is not ``skewless-shop``); the first
    occurrence wins; surrounding double quotes are removed.
    """
    start = 0
    n = len(name)
    while True:
        at = header.find(name, start)
        if at < 0:
            return None
        end = at + n
        if (at == 0 or header[at - 1] in b" ;\t") and header[end : end + 1] == b"=":
            stop = header.find(b";", end)
            value = header[end + 1 : stop if stop >= 0 else len(header)].strip()
            if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
                value = value[1:-1]
            return value
        start = end
