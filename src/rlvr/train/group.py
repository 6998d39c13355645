"""A learner group (``trainer.dist``): rank 0 drives, ranks 1..N-1 follow.

Rank 0 runs the training loop as in one process: producer, rollout engine, evaluation, weight publication,
logging and checkpoint bookkeeping. Its learner is a :class:`GroupLearner`: every call that makes collectives
(an update, gathering the weights, the optimizer's state for a checkpoint, loading it on resume) is first
announced to the other ranks, which run :func:`follow`, so every rank enters the same collectives in the same
order. The rollout engine samples from ``policy``, an unsharded copy of the model on rank 0 that
:meth:`GroupLearner.publish` refreshes after every update from the gathered shards (bit-identical to the
learner's weights); checkpoints and the workers' weight payloads read it, so they are what a single-process
learner would write and send.
"""

from __future__ import annotations

import time

import torch

from rlvr.parallel import DataParallel
from rlvr.train.learner import Learner

#: what rank 0 can tell the other ranks to do next (each is one collective sequence on every rank)
COMMANDS = ("update", "publish", "state", "load", "stop")


class GroupLearner:
    """Rank 0's learner in a group: :class:`~rlvr.train.learner.Learner`'s calls, each announced to the other
    ranks first. Attributes not defined here (``policy_version``, ``kl_coef``, ``skipped_steps``, ...) are the
    learner's, read and written through."""

    _own = ("learner", "group", "policy")

    def __init__(self, learner: Learner, group: DataParallel, policy: torch.nn.Module):
        object.__setattr__(self, "learner", learner)
        object.__setattr__(self, "group", group)
        object.__setattr__(self, "policy", policy)  # the unsharded copy the engine samples from

    def __getattr__(self, name):
        return getattr(self.learner, name)

    def __setattr__(self, name, value):
        if name in self._own:
            object.__setattr__(self, name, value)
        else:  # e.g. a controller moving kl_coef: the next update sends it to every rank
            setattr(self.learner, name, value)

    def _tell(self, command: str, *args) -> None:
        self.group.arrive(command)  # a rank that does not arrive is named here
        self.group.broadcast((command, args))

    def update(self, exp, step: int) -> dict[str, float]:
        t0 = self.group.collective_seconds
        self._tell("update", exp, step, {"kl_coef": self.learner.kl_coef, "entropy_coef": self.learner.entropy_coef})
        metrics = self.learner.update(exp, step)
        metrics["dist/ranks"] = self.group.world_size
        metrics["time_collectives"] = self.group.collective_seconds - t0
        return metrics

    def publish(self) -> dict[str, float]:
        """Gather the shards into ``policy`` (every rank walks the state dict in the same order)."""
        t0 = time.perf_counter()
        self._tell("publish")
        state = self.group.full_state_dict(self.learner.model)
        self.policy.load_state_dict(state)
        return {"time_gather": time.perf_counter() - t0}

    def state_dict(self) -> dict:
        self._tell("state")
        return self.learner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._tell("load", {k: v for k, v in state.items() if k != "optimizer"})
        self.learner.load_state_dict(state)

    def load_weights(self) -> None:
        """``policy``'s weights (a checkpoint loaded into it) into every rank's shards."""
        self.group.load_full_state_dict(self.learner.model, self.policy.state_dict())

    def close(self) -> None:
        self._tell("stop")


def follow(learner: Learner, group: DataParallel) -> None:
    """Ranks 1..N-1: do what rank 0 says, in its order, until it says stop."""
    while True:
        group.arrive("the next command")
        command, args = group.broadcast()
        if command == "update":
            exp, step, coefs = args
            learner.kl_coef, learner.entropy_coef = coefs["kl_coef"], coefs["entropy_coef"]
            learner.update(exp, step)
        elif command == "publish":
            group.full_state_dict(learner.model)
        elif command == "state":
            learner.state_dict()
        elif command == "load":
            (state,) = args
            learner.load_state_dict({**state, "optimizer": {}})
        elif command == "stop":
            return
        else:
            raise RuntimeError(f"learner rank {group.rank}: unknown command {command!r} from rank 0")
