"""``rlvr serve-reward``: serve a task's verifier or reward components over HTTP (rlvr.rewards.remote).

    rlvr serve-reward --task arithmetic --port 8000
    rlvr serve-reward --task dataset --task-options '{"path": "data.jsonl", "verifier": "exact"}'
    rlvr serve-reward --component '{"type": "reward_model", "name": "rm", "path": "runs/rm/model"}' --serialize

A trainer then reads the scores with ``reward.components: [{type: remote, url: "http://host:8000"}]``
(the protocol: :mod:`rlvr.rewards.remote`). The server prints one line (its URL and names) on stdout,
then serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

__all__ = ["TaskScorer", "add_parser", "run"]


class TaskScorer:
    """A task's verifier as a reward component: names are the task's ``reward_names``; a call scores the
    batch with ``rlvr.tasks.base.score`` (the task's ``score_batch`` or ``score`` per row).

    Problems arrive as any objects (or dicts) with prompt/answer/meta and are handed to the task as
    ``rlvr.tasks.base.Problem``, which is what verifiers expect."""

    def __init__(self, task: Any) -> None:
        self.task = task
        self.names: tuple[str, ...] = tuple(task.reward_names)

    def __call__(self, problems: Sequence[Any], texts: Sequence[str]) -> dict[str, list[float]]:
        from rlvr.tasks.base import Problem, score

        if not texts:
            return {name: [] for name in self.names}
        rows = [p if isinstance(p, Problem) else Problem(*_fields(p)) for p in problems]
        scores = score(self.task, rows, list(texts))
        missing = [n for n in self.names if n not in scores]
        if missing:
            raise ValueError(f"task {getattr(self.task, 'name', self.task)!r} did not return "
                             f"{', '.join(missing)} (its reward_names)")
        return {name: scores[name].tolist() for name in self.names}


def _fields(p: Any) -> tuple[str, str, dict]:
    get = p.get if isinstance(p, dict) else (lambda key, default=None: getattr(p, key, default))
    return str(get("prompt", "")), str(get("answer", "")), dict(get("meta", None) or {})


def add_parser(sub) -> None:
    """Register ``serve-reward`` on the ``rlvr`` command's subparsers."""
    s = sub.add_parser("serve-reward", help="serve a task's verifier or reward components over HTTP "
                                            "(for reward.components: [{type: remote, url: ...}])")
    s.add_argument("--task", metavar="NAME", help="serve this task's verifier (its reward_names), e.g. arithmetic")
    s.add_argument("--task-options", metavar="JSON", help="the task's options as a JSON object (as task.options)")
    s.add_argument("--component", metavar="JSON", action="append", default=[],
                   help="a reward component as in reward.components, as JSON (repeatable), e.g. "
                        "'{\"type\": \"reward_model\", \"name\": \"rm\", \"path\": \"...\"}'")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    s.add_argument("--serialize", action="store_true",
                   help="score one batch at a time (for components that are not thread-safe)")
    s.add_argument("--log-requests", action="store_true", help="one stderr line per request")


def build_scorers(args: argparse.Namespace) -> list:
    """The scorers ``args`` asks for (ValueError naming the option when one cannot be built)."""
    scorers = []
    if args.task:
        from rlvr.tasks import make_task

        options = _json_option("--task-options", args.task_options, dict) if args.task_options else {}
        scorers.append(TaskScorer(make_task(args.task, **options)))
    elif args.task_options:
        raise ValueError("--task-options needs --task NAME")
    if args.component:
        from rlvr.rewards.components import build_component

        for text in args.component:
            scorers.append(build_component(_json_option("--component", text, dict)))
    if not scorers:
        raise ValueError("serve-reward: nothing to serve; give --task NAME and/or --component JSON")
    return scorers


def _json_option(flag: str, text: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{flag} {text!r}: not JSON ({err}); e.g. {flag} '{{\"key\": \"value\"}}'") from None
    if not isinstance(value, kind):
        raise ValueError(f"{flag} {text!r}: expected a JSON object, got {type(value).__name__}")
    return value


def run(args: argparse.Namespace) -> int:
    from rlvr.rewards.remote import PROTOCOL, RewardServer

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: expected 0..65535")
    scorers = build_scorers(args)
    try:
        server = RewardServer(scorers, host=args.host, port=args.port, serialize=args.serialize,
                              log=args.log_requests)
    except OSError as err:
        raise ValueError(f"--host {args.host} --port {args.port}: cannot listen there ({err.strerror or err}); "
                         "pick another port (--port 0 picks a free one)") from None
    print(f"serving reward components {', '.join(server.names)} at {server.url} (protocol {PROTOCOL}: "
          "POST /score, GET /health); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0
