"""A learner that spans processes: torch.distributed process groups, FSDP2 wrapping, and the few collectives the
learner needs (:mod:`rlvr.parallel.data_parallel`). Plain torch only: no rlvr room below it is needed."""

from rlvr.parallel.data_parallel import DIST_ENGINES, MESHES, DataParallel, free_port, launched_world_size

__all__ = ["DIST_ENGINES", "MESHES", "DataParallel", "free_port", "launched_world_size"]
