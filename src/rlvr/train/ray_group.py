"""A learner group launched as Ray actors (``trainer.dist.launcher: ray``): what torchrun does, on a Ray cluster.

``rlvr train --nproc N ... trainer.dist.launcher=ray`` starts N actors, one per rank, in one placement group
(one bundle per rank: a CPU, and a GPU when ``run.device`` is cuda). Actor 0 reports its node address and a free
port; every actor sets ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (0: Ray gives
each actor its own device) and runs the same :func:`rlvr.train.loop.train` a torchrun rank runs, which forms the
process group inside the actor. Rank 0 drives the run (and, with ``runtime.backend=ray``, starts its rollout
workers on the same cluster). No Ray Train, no RPC of our own: the ranks talk through torch.distributed, as
under torchrun (``../shared/design/scale-out.md``, section 4).
"""

from __future__ import annotations

import os

from rlvr.experience.ray_workers import import_ray
from rlvr.parallel import free_port


class RankActor:
    """One rank of the group: a process whose environment says which rank it is, then the training run."""

    def address(self) -> tuple[str, int]:
        """This node's address and a free port on it (actor 0's are the group's rendezvous)."""
        import ray

        return ray.util.get_node_ip_address(), free_port("")  # "": every interface, as the other ranks connect

    def run(self, config_dict: dict | None, resume: str | None, rank: int, world_size: int, addr: str,
            port: int, threads: int) -> str | None:
        import torch

        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0", MASTER_ADDR=addr,
                          MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
        torch.set_num_threads(threads)
        from rlvr.config import config_from_dict
        from rlvr.train.loop import train

        result = train(config_from_dict(config_dict) if config_dict is not None else None, resume=resume)
        return None if result is None else str(result.run_dir)


def launch_ray_group(config, nproc: int, resume: str | None = None, threads: int = 1) -> str | None:
    """Run ``config`` (or ``resume`` a run) as a Ray learner group of ``nproc`` ranks; returns rank 0's run folder."""
    ray = import_ray()
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    rt = config.runtime
    gpus = 1 if str(config.run.device).startswith("cuda") else 0
    started = False
    if not ray.is_initialized():
        if rt.ray_address:
            ray.init(address=rt.ray_address, ignore_reinit_error=True)
        else:  # this machine: room for the ranks and, with runtime.backend=ray, rank 0's rollout workers
            ray.init(num_cpus=max(os.cpu_count() or 1, nproc * threads + rt.num_rollout_workers),
                     include_dashboard=False, ignore_reinit_error=True)
        started = True
    bundle = {"CPU": threads, **({"GPU": gpus} if gpus else {})}
    group = placement_group([dict(bundle) for _ in range(nproc)], strategy="PACK")
    try:
        ray.get(group.ready(), timeout=config.trainer.dist.timeout_s)
        actor = ray.remote(num_cpus=threads, num_gpus=gpus, max_restarts=0)(RankActor)
        ranks = [actor.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=r)).remote() for r in range(nproc)]
        addr, port = ray.get(ranks[0].address.remote())
        config_dict = None if resume is not None else config.to_dict()
        runs = ray.get([a.run.remote(config_dict, resume, r, nproc, addr, port, threads)
                        for r, a in enumerate(ranks)])
        return runs[0]
    finally:
        remove_placement_group(group)
        if started:
            ray.shutdown()
