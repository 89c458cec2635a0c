"""What ``pause``, ``resume``, ``abort`` and ``rollback`` share: ``POST
/v1/apps/APP/VERB`` and one line saying what the controller did."""

from __future__ import annotations

import argparse
from typing import Any

from skewless.commands.client import Controller, add_target_arguments, run_command, target_from_args

SUMMARY = {
    "pause": "Pause APP's rollout where it stands (resume continues it).",
    "resume": "Resume APP's paused rollout.",
    "abort": "Abort APP's rollout where it stands; new sessions go back to the old version.",
    "rollback": "Roll APP back to its previous release, with the same strategy.",
}


def describe(verb: str, app: str, answer: Any) -> str:
    rollout = answer.get("rollout") if isinstance(answer, dict) else None
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return answer["message"]
    if isinstance(rollout, dict) and rollout.get("state"):
        extra = f" to {rollout['to']}" if rollout.get("to") else ""
        return f"{app}: rollout{extra} is {rollout['state']}"
    done = {"pause": "paused", "resume": "resumed", "abort": "aborted", "rollback": "rolling back"}
    return f"{app}: {done[verb]}"


def run_action(verb: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"skewless {verb}", description=SUMMARY[verb])
    p.add_argument("app", metavar="APP")
    if verb == "rollback":
        p.add_argument(
            "--keep-sessions",
            action="store_true",
            help="the release is not broken: its pinned sessions stay on it until idle "
            "(default: they are re-pinned to the previous release)",
        )
    add_target_arguments(p)
    args = p.parse_args(argv)

    def body() -> int:
        request = {"broken": False} if getattr(args, "keep_sessions", False) else None
        with Controller(target_from_args(args)) as api:
            answer = api.post(f"/v1/apps/{args.app}/{verb}", request)
        print(describe(verb, args.app, answer))
        return 0

    return run_command(verb, body)
