"""Fixtures for router tests; the helpers live in router_harness.py (importable by tests)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from router_harness import backend_factory, router_factory

__all__ = ["backend_factory", "router_factory"]
