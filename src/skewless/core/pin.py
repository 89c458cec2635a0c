"""Pins: a session's version, carried by the client in a signed token.

Theory of operation
-------------------
A pin is an ASCII token, the same in the cookie and in the header form::

    s1.KID.SID.IAT.SEEN.VERSION.SIG

``s1`` is the format; ``KID`` the id of the key that signed it; ``SID`` a random session
id (16 url-safe characters); ``IAT`` when the session was first pinned and ``SEEN`` when
this token was issued (unix seconds, decimal); ``VERSION`` the app version (it may
contain dots, hence it is last but one); ``SIG`` is the first 16 bytes (128 bits), in hex, of
HMAC-SHA256(secret, APP "\\n" everything before the last dot). Binding the app name into the MAC means a pin
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

import binascii
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

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


class Pin(NamedTuple):
    """A verified pin. A NamedTuple rather than a frozen dataclass: it is built once per
    new token on the hot path, and a tuple is several times cheaper to make."""

    app: str
    key_id: str
    session_id: str
    version: str
    issued_at: int
    """When the session was first pinned (the absolute cap counts from here)."""
    seen_at: int
    """When this token was issued (the idle expiry counts from here)."""
    token: bytes


class _PreparedKey:
    """HMAC-SHA256 with the key schedule done once: the inner and outer hash states after
    the padded key are kept and copied per message (RFC 2104), about 2.5 times faster
    than ``hmac.digest`` with the raw key."""

    __slots__ = ("inner", "outer", "per_app")

    def __init__(self, secret: bytes) -> None:
        if len(secret) > 64:
            secret = hashlib.sha256(secret).digest()
        padded = secret.ljust(64, b"\0")
        self.inner = hashlib.sha256(padded.translate(_IPAD))
        self.outer = hashlib.sha256(padded.translate(_OPAD))
        self.per_app: dict[str, Any] = {}
        """app -> inner state after ``APP\\n``: the app prefix is hashed once too."""

    def __repr__(self) -> str:
        return "_PreparedKey(<secret>)"

    def mac(self, app: str, body: bytes) -> bytes:
        prefix = self.per_app.get(app)
        if prefix is None:
            if len(self.per_app) > 1024:
                self.per_app.clear()
            prefix = self.inner.copy()
            prefix.update(app.encode() + b"\n")
            self.per_app[app] = prefix
        inner = prefix.copy()
        inner.update(body)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return binascii.hexlify(outer.digest()[:16])


_new_pin = tuple.__new__
_IPAD = bytes((x ^ 0x36) for x in range(256))
_OPAD = bytes((x ^ 0x5C) for x in range(256))


class PinCodec:
    """Signs and verifies pins with one keyring; caches tokens already verified.

    Pure (no I/O) but not frozen: the cache is its only state.
    """

    __slots__ = ("_cache", "_signer", "_signer_key", "_verifiers", "keyring")

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._signer = keyring.keys[0]
        self._verifiers = {k.key_id.encode(): _PreparedKey(k.secret) for k in keyring.keys}
        self._signer_key = self._verifiers[self._signer.key_id.encode()]
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
        token = body + b"." + self._signer_key.mac(app, body)
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
        dot = token.rfind(b".")
        if dot < 0:
            return None
        body = token[:dot]
        parts = body.split(b".", 5)
        if len(parts) != 6 or parts[0] != FORMAT:
            return None
        key = self._verifiers.get(parts[1])
        if key is None:
            return None
        if not hmac.compare_digest(key.mac(app, body), token[dot + 1 :]):
            return None
        # The MAC makes the rest ours (ASCII, digits where digits go); a leaked key must
        # still not crash the router, hence the guards.
        try:
            issued_at, seen_at = int(parts[3]), int(parts[4])
            fields = (app, parts[1].decode(), parts[2].decode(), parts[5].decode())
        except ValueError:  # UnicodeDecodeError is a ValueError
            return None
        if seen_at < issued_at or issued_at < 0:
            return None
        return _new_pin(Pin, (*fields, issued_at, seen_at, token))


def needs_refresh(pin: Pin, now: float, idle_timeout: float) -> bool:
    """Re-issue once a token is a tenth of the idle timeout old (at most every minute)."""
    return now - pin.seen_at >= min(60.0, idle_timeout / 10.0)


def cookie_max_age(pin: Pin, now: float, idle_timeout: float, max_lifetime: float) -> int:
    """Seconds the browser should keep the cookie: the sooner of idle and absolute expiry.

    Rounded up: the router checks expiry itself, so the cookie may outlive the pin by
    under a second, but it must never die first (rounded down, a pin 1.9 s from its
    idle expiry got ``Max-Age=1``, and a cookie jar that also rounds its clock down,
    like Python's, dropped it while the session was active: a session moved to another
    version unannounced).
    """
    left = min(pin.seen_at + idle_timeout, pin.issued_at + max_lifetime) - now
    return max(0, math.ceil(left))


_COOKIE_RES: dict[bytes, Callable[[bytes], re.Match[bytes] | None]] = {}


def find_cookie(header: bytes, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a ``Cookie`` header value, or None.

    Matches whole names only (``xskewless-shop`` is not ``skewless-shop``); the first
    occurrence wins; surrounding double quotes are removed. One compiled regex per name:
    about twice as fast as slicing by hand.
    """
    search = _COOKIE_RES.get(name)
    if search is None:
        if len(_COOKIE_RES) > 256:
            _COOKIE_RES.clear()
        pattern = rb"(?:^|[; \t])" + re.escape(name) + rb'=[ \t]*"?([^;" \t]*)'
        search = _COOKIE_RES[name] = re.compile(pattern).search
    m = search(header)
    return m[1] if m is not None else None
