"""Test and benchmark tools that ship with skewless (a fault-injecting TCP proxy)."""
