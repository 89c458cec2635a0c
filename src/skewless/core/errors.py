"""The one error hierarchy of skewless, split by whose fault it is."""

from __future__ import annotations


class SkewlessError(Exception):
    """Base of every error skewless raises on purpose."""


class ClientError(SkewlessError):
    """The caller sent something wrong (bad request, bad CLI input, bad pin)."""


class ConfigError(SkewlessError):
    """A configuration or spec (route table, release, desired state, keys) is invalid.

    The message names the field and the fix, e.g. ``release.health.path must start with "/"``.
    """


class UpstreamError(SkewlessError):
    """Something we depend on (an instance, the controller, an agent) failed."""
