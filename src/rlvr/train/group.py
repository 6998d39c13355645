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
from rlvr.parallel.data_parallel import load_sharded, save_sharded
from rlvr.train.learner import Learner
from rlvr.utils import rng_state, set_rng_state

#: what rank 0 can tell the other ranks to do next (each is one collective sequence on every rank)
COMMANDS = ("update", "publish", "save", "load", "stop")  # followers: FOLLOWERS


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
        """Gather the shards into ``policy``, a bucket at a time (every rank walks the state dict in the same
        order: :meth:`rlvr.parallel.DataParallel.gather_buckets`); the engine, the weight publisher and the
        checkpoints then read ``policy``, bit-identical to the learner's weights."""
        t0 = time.perf_counter()
        self._tell("publish")
        target = self.policy.state_dict()
        with torch.no_grad():
            for bucket in self.group.gather_buckets(self.learner.model, self.learner.config.trainer.dist.bucket_mb):
                for names, whole in bucket:
                    for name in names:
                        target[name].copy_(whole)
        return {"time_gather": time.perf_counter() - t0}

    def save_checkpoint(self, folder) -> None:
        """Every rank's part of a checkpoint in ``folder`` (:func:`save_checkpoint`)."""
        self._tell("save", str(folder))
        save_checkpoint(self.learner, self.group, folder)

    def load_state_dict(self, state: dict) -> None:
        """The trainer state on every rank. A group's checkpoint keeps the optimizer in its shards
        (:func:`resume_shards`); a single-process checkpoint's optimizer state is sent from rank 0."""
        self._tell("load", {k: v for k, v in state.items() if k != "optimizer"}, "optimizer" in state)
        self.learner.load_state_dict(state)

    def resume_shards(self, checkpoint) -> str:
        """Every rank's shards from ``checkpoint`` (rank 0 has loaded its weights into ``policy``): a group's
        checkpoint is read back shard by shard (model and optimizer), any other is sent from ``policy``."""
        return resume_shards(self.learner, self.group, checkpoint, self.policy)

    def close(self) -> None:
        self._tell("stop")


def follow(learner: Learner, group: DataParallel) -> None:
    """Ranks 1..N-1: do what rank 0 says, in its order, until it says stop."""
    while follow_one(learner, group):
        pass


def _update(learner: Learner, group: DataParallel, exp, step: int, coefs: dict) -> None:
    learner.kl_coef, learner.entropy_coef = coefs["kl_coef"], coefs["entropy_coef"]
    learner.update(exp, step)


def _publish(learner: Learner, group: DataParallel) -> None:
    for _ in group.gather_buckets(learner.model, learner.config.trainer.dist.bucket_mb):
        pass


def _load(learner: Learner, group: DataParallel, state: dict, with_optimizer: bool) -> None:
    learner.load_state_dict({**state, **({"optimizer": {}} if with_optimizer else {})})


#: what a follower does for each of rank 0's commands (:data:`COMMANDS`; ``stop`` ends :func:`follow`)
FOLLOWERS = {"update": _update, "publish": _publish,
             "save": lambda learner, group, folder: save_checkpoint(learner, group, folder), "load": _load}


def follow_one(learner: Learner, group: DataParallel) -> bool:
    """Do rank 0's next command; False when it was stop."""
    group.arrive("the next command")
    command, args = group.broadcast()
    if command == "stop":
        return False
    if command not in FOLLOWERS:
        raise RuntimeError(f"learner rank {group.rank}: unknown command {command!r} from rank 0")
    FOLLOWERS[command](learner, group, *args)
    return True

#: the folder of a learner group's checkpoint that holds every rank's shards (model and optimizer)
SHARDS = "shards"
#: the file in SHARDS holding every rank's random state
RNG_FILE = "rng.pt"


def save_checkpoint(learner: Learner, group: DataParallel, folder) -> None:
    """Every rank's part of a checkpoint, beside rank 0's Hugging Face export of the policy: its shards of the
    policy and the critics with their optimizers (``folder/shards``, ``torch.distributed.checkpoint``: a
    resume reads them back with no gather) and the critics' exports (gathered, written by rank 0)."""
    from pathlib import Path

    save_sharded(learner.sharded_parts(), Path(folder) / SHARDS)
    rngs = group.gather_objects(rng_state())  # each rank's random state (e.g. a value head's dropout)
    if group.driver:
        torch.save(rngs, Path(folder) / SHARDS / RNG_FILE)
    if learner.critics is not None:
        learner.critics.save_pretrained(folder)


def resume_shards(learner: Learner, group: DataParallel, checkpoint, policy: torch.nn.Module | None = None) -> str:
    """Every rank's part of a resume, at the same point of start-up: a checkpoint with ``shards/`` (a learner
    group's, of any world size) is read back shard by shard, optimizers included, and nothing is gathered;
    another (a single-process run's) sends rank 0's weights (``policy``, the critics' exports) into the
    shards. Returns which."""
    from pathlib import Path

    folder = Path(checkpoint) / SHARDS
    sharded = group.broadcast(folder.is_dir() if group.driver else None)  # rank 0's view decides for all
    if sharded:
        load_sharded(learner.sharded_parts(), folder)
        rngs = group.broadcast(torch.load(folder / RNG_FILE, weights_only=False) if group.driver else None)
        if len(rngs) == group.world_size:  # (resumed with another number of ranks: each keeps its own)
            set_rng_state(rngs[group.rank])  # rank 0's is also set from the trainer state, to the same
        return "shards"
    group.load_full_state_dict(learner.model, policy.state_dict() if group.driver else {})
    if learner.critics is not None:
        learner.critics.load_pretrained(checkpoint)
    return "weights"
