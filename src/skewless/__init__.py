"""skewless: zero-downtime, zero-skew releases for web fleets."""

__version__ = "0.1.0"
