"""Sans-I/O core: data model, pins, routing policy, rollout planner, analysis.

Nothing in this package imports asyncio, socket, subprocess or does file I/O: every
function takes a snapshot (and a clock reading) and returns what to do.
"""
