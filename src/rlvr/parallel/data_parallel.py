"""Data-parallel and FSDP2-sharded learners on torch.distributed: the process group, the wrapping, and the
collectives the learner makes (``trainer.dist``).

The learner is SPMD with a driver (``../shared/design/scale-out.md``): every rank holds the same
:class:`~rlvr.experience.batch.Experience` (rank 0 makes it and broadcasts it), computes the same advantages and
the same split into minibatches, and trains its share of each minibatch's *whole groups*
(:meth:`DataParallel.share`). The loss normalisers count the whole minibatch, and the gradients are *summed*
across ranks (``set_gradient_divide_factor(1)`` with sum reductions), so N ranks compute the single-process
gradient, to float reassociation.

Engines, both from ``torch.distributed.fsdp.fully_shard`` (FSDP2), applied in place so the model stays the
Hugging Face module it was (its attributes, its head, its generation config):

* ``fsdp2``: parameters, gradients and optimizer state sharded over a 1-D mesh of all ranks; each decoder
  block is its own unit (all-gathered for its forward and backward, resharded after).
* ``ddp``: the same call over a 2-D ``(replicate=N, shard=1)`` mesh (HSDP with shards of one rank): every
  rank holds the whole model, forwards run locally, and the backward all-reduces gradients across ranks:
  DistributedDataParallel's semantics, without its wrapper (whose forward the learner's chunked-head and
  shared-prefix forwards would bypass).

Collective discipline: every rank makes the same sequence of collective calls. Forwards of a sharded model
are collective, so every rank runs the same number of micro-batches (:meth:`DataParallel.pad`: a rank with
fewer runs zero-weight ones); the "this step is finite" decision is all-reduced (:meth:`all_true`); gradient
clipping reads the norm over all shards. :meth:`arrive` is a monitored barrier: a rank that does not reach it
within ``trainer.dist.timeout_s`` is named in the error.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

#: ``trainer.dist.engine`` -> the FSDP2 device mesh of N ranks: ``(shape, dimension names)``. ddp: replicate across
#: all ranks, shards of one rank (whole parameters everywhere, gradients all-reduced); fsdp2: shard across all ranks.
MESHES = {
    "ddp": lambda n: ((n, 1), ("replicate", "shard")),
    "fsdp2": lambda n: ((n,), ("shard",)),
}
#: every ``trainer.dist.engine``: none (one learner process) and the meshes above
DIST_ENGINES = ("none", *MESHES)
#: ``trainer.dist.mixed_precision`` -> FSDP2's policy (auto: bf16 on cuda, none on cpu; :meth:`DataParallel.init`)
MIXED_PRECISION = {
    "none": lambda: None,  # fp32 throughout
    "bf16": lambda: _mp_policy(torch.bfloat16),  # bf16 compute, fp32 reductions, fp32 master weights
}


def launched_world_size() -> int:
    """The world size a launcher (torchrun, a Ray learner group) put in the environment; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _backend(device: str) -> str:
    if device.startswith("cuda") and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"  # the CPU wheel has no NCCL: "cpu:gloo,cuda:nccl" fails there (scale-out.md, section 3)


@dataclass
class DataParallel:
    """This process's place in the learner group and the group's collectives."""

    engine: str
    rank: int
    world_size: int
    timeout_s: float = 600.0
    device: str = "cpu"
    mixed_precision: str = "none"  # bf16: FSDP2 MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)
    collective_seconds: float = field(default=0.0, repr=False)  # seconds in the collectives below, in all

    @classmethod
    def init(cls, engine: str, timeout_s: float = 600.0, device: str = "cpu",
             mixed_precision: str = "none") -> DataParallel:
        """Join (or form) the default process group from the launcher's environment (``RANK``, ``WORLD_SIZE``,
        ``MASTER_ADDR``, ``MASTER_PORT``: torchrun, or a Ray learner group); a lone process without a launcher
        forms a group of one. ``mixed_precision``: none, bf16, or auto (bf16 on cuda)."""
        if engine not in MESHES:
            raise ValueError(f"trainer.dist.engine must be one of {', '.join(MESHES)} here, not {engine!r}")
        if not dist.is_initialized():
            if "RANK" not in os.environ:  # no launcher: a group of one (FSDP2 with world size 1)
                os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                                  MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
            dist.init_process_group(_backend(device), timeout=datetime.timedelta(seconds=timeout_s))
        if device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = f"cuda:{local}"
            torch.cuda.set_device(local)
        if mixed_precision == "auto":
            mixed_precision = "bf16" if device.startswith("cuda") else "none"
        return cls(engine, dist.get_rank(), dist.get_world_size(), timeout_s, device, mixed_precision)

    @property
    def driver(self) -> bool:
        """Rank 0 drives: rollouts, rewards, weight publication, logging, checkpoint bookkeeping."""
        return self.rank == 0

    # ------------------------------------------------------------------ the model
    def wrap(self, model: torch.nn.Module, mp_policy=None) -> torch.nn.Module:
        """``fully_shard`` each decoder block, then the root, in place; gradients summed across ranks (not
        averaged: the loss normalisers are already global). Build the optimizer after this."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        shape, names = MESHES[self.engine](self.world_size)
        mesh = init_device_mesh(self.device.split(":")[0], shape, mesh_dim_names=names)
        mp_policy = mp_policy or MIXED_PRECISION[self.mixed_precision]()
        kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
        for block in decoder_blocks(model):
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)  # a sum: N ranks give the single-process gradient
                module.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
        return model

    def shard(self, model: torch.nn.Module, mp_policy=None) -> torch.nn.Module:
        """Wrap ``model`` (:meth:`wrap`) and give every rank rank 0's weights, in place.

        Rank 0 holds the weights (loaded from the checkpoint); the other ranks may have built the model on the
        ``meta`` device (no memory, no weights read: :func:`rlvr.models.load.build_on_meta`). Their shards are
        allocated after wrapping, the non-persistent buffers that no state dict carries (rotary ``inv_freq``)
        are rebuilt by the model's own initialiser (:func:`rebuild_buffers`), rank 0's parameters and
        persistent buffers are broadcast into every rank's shards, and every rank's buffers are checked against
        rank 0's (:meth:`check_buffers`: an uninitialised rotary buffer is an error, not a silently wrong
        forward). A collective: every rank calls it for the same models in the same order."""
        state = model.state_dict() if self.driver else {}  # rank 0's full weights (held through the wrapping)
        on_meta = any(t.is_meta for t in (*model.parameters(), *model.buffers()))
        if on_meta and self.driver:
            raise ValueError("rank 0 must hold the model's weights; only ranks 1..N-1 may build it on the meta device")
        self.wrap(model, mp_policy)
        if on_meta:
            model.to_empty(device=self.device)
            rebuild_buffers(model)
        self.load_full_state_dict(model, state)
        del state
        self.check_buffers(model)
        return model

    def check_buffers(self, model: torch.nn.Module) -> None:
        """Every rank's buffers equal rank 0's, bit for bit; a buffer left on the meta device or rebuilt wrong
        (an uninitialised rotary ``inv_freq`` after ``to_empty``) raises, naming it and the rank."""
        mine = {name: _digest(b) for name, b in model.named_buffers()}
        ranks = self.gather_objects(mine)
        for rank, theirs in enumerate(ranks):
            bad = sorted(n for n in set(theirs) | set(ranks[0]) if theirs.get(n) != ranks[0].get(n))
            if bad:
                raise RuntimeError(
                    f"learner rank {rank}: buffer(s) {', '.join(bad)} differ from rank 0's after building the model "
                    f"on the meta device (no state dict carries them and this model's _init_weights did not rebuild "
                    f"them); set trainer.dist.meta_init=false to load the weights on every rank")

    def gradient_sync(self, model: torch.nn.Module, sync: bool) -> None:
        """Defer the gradient reduction to the minibatch's last micro-batch (gradient accumulation)."""
        model.set_requires_gradient_sync(sync)

    @staticmethod
    def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The unsharded state dict on every rank's CPU (a collective: every rank calls it, in the same order),
        with the Hugging Face names of the unwrapped model."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def gather_buckets(self, model: torch.nn.Module, bucket_mb: float = 256.0):
        """The whole tensors of ``model``'s state dict, in its order, a bucket at a time: ``[(names, tensor),
        ...]`` per bucket of at most ``bucket_mb`` MiB (a tensor larger than that is a bucket of its own), where
        ``names`` are every state-dict name of one tensor (tied weights are gathered once). A collective
        generator: every rank iterates it to the end; rank 0's buckets hold the gathered tensors, the other
        ranks' hold ``None`` in their place, and no rank holds more than one bucket beyond its shards
        (``get_model_state_dict(full_state_dict=True)`` would hold the whole model on rank 0 at once)."""
        from torch.distributed.tensor import DTensor

        unique: dict[int, list] = {}  # one entry per tensor object (tied weights share one), in state-dict order
        for name, t in model.state_dict(keep_vars=True).items():
            unique.setdefault(id(t), [[], t])[0].append(name)
        bucket, size, limit = [], 0, bucket_mb * 2**20
        for names, t in unique.values():
            nbytes = t.numel() * t.element_size()
            if bucket and size + nbytes > limit:
                yield bucket
                bucket, size = [], 0
            with torch.no_grad():
                whole = self._timed(t.full_tensor) if isinstance(t, DTensor) else t.detach()
            bucket.append((names, whole if self.driver else None))
            size += nbytes
        if bucket:
            yield bucket

    @staticmethod
    def load_full_state_dict(model: torch.nn.Module, state: dict) -> None:
        """Load rank 0's unsharded ``state`` into every rank's shards (a collective; other ranks pass ``{}``)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    @staticmethod
    def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
        """Rank 0's unsharded optimizer ``state`` into every rank's shards (a collective)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(model, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    # ------------------------------------------------------------------ work split
    def share(self, items: list) -> list:
        """This rank's share of a minibatch's groups (whole groups, round robin: ``items[rank::N]``)."""
        return items[self.rank::self.world_size]

    def shares(self, items: list) -> list[list]:
        """Every rank's share (every rank can compute them: the experience is the same on all)."""
        return [items[r::self.world_size] for r in range(self.world_size)]

    # ------------------------------------------------------------------ collectives
    def _timed(self, fn, *args, **kwargs):
        import time

        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.collective_seconds += time.perf_counter() - t0

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (an all-reduce MIN): a NaN on one rank makes every rank skip."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        self._timed(dist.all_reduce, t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def gather_objects(self, obj) -> list:
        """``obj`` of every rank, in rank order (all-gather of picklable objects)."""
        out = [None] * self.world_size
        self._timed(dist.all_gather_object, out, obj)
        return out

    def broadcast(self, obj=None):
        """Rank 0's ``obj`` on every rank (broadcast of a picklable object)."""
        box = [obj if self.driver else None]
        self._timed(dist.broadcast_object_list, box, src=0)
        return box[0]

    def arrive(self, what: str) -> None:
        """A monitored barrier: a rank that does not arrive within ``timeout_s`` is named in the error
        (gloo; the other backends get a plain barrier)."""
        try:
            if dist.get_backend() == "gloo":
                self._timed(dist.monitored_barrier, timeout=datetime.timedelta(seconds=self.timeout_s),
                            wait_all_ranks=True)
            else:
                self._timed(dist.barrier)
        except RuntimeError as err:
            raise RuntimeError(f"learner rank {self.rank}: not every rank reached '{what}' within "
                               f"trainer.dist.timeout_s={self.timeout_s:g} s ({err})") from err

    def peak_memory_mb(self) -> float:
        """This rank's peak memory: the GPU's allocated peak on CUDA, else the process's peak resident set."""
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated() / 2**20
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def save_sharded(parts: dict, folder) -> None:
    """Write this rank's shards of every ``{name: (model, optimizer)}`` under ``folder`` with
    ``torch.distributed.checkpoint`` (a collective: each rank writes its own file, rank 0 the metadata; the
    folder must be one every rank can reach, e.g. a shared file system across machines)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    state = {}
    for name, (model, optimizer) in parts.items():
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state[name] = {"model": model_state, "optimizer": optimizer_state}
    dcp.save(state, checkpoint_id=str(folder))


def load_sharded(parts: dict, folder) -> None:
    """Read every ``{name: (model, optimizer)}``'s shards back from ``folder`` (:func:`save_sharded`), each rank
    its own part with nothing gathered; any world size, including one process without a process group (the
    checkpoint is resharded on load)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state = {}
    for name, (model, optimizer) in parts.items():
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state[name] = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(folder))
    for name, (model, optimizer) in parts.items():
        set_state_dict(model, optimizer, model_state_dict=state[name]["model"],
                       optim_state_dict=state[name]["optimizer"])


def _mp_policy(dtype: torch.dtype):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def rebuild_buffers(model: torch.nn.Module) -> None:
    """Recompute the non-persistent buffers of a model materialised from the meta device (``to_empty`` leaves
    them uninitialised; no state dict carries them): each module holding one is re-initialised by the Hugging
    Face model's own ``_init_weights``, which computes rotary ``inv_freq`` from the config (prime-rl's
    ``init_buffers_post_meta`` does the same by hand). Buffers it does not know stay as they were, and
    :meth:`DataParallel.check_buffers` reports them."""
    from transformers import PreTrainedModel

    root = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if root is None:
        return
    for module in model.modules():
        if module._non_persistent_buffers_set:
            with torch.no_grad():
                root._init_weights(module)


def _digest(t: torch.Tensor) -> str:
    import hashlib

    if t.is_meta:
        return "meta"
    t = t.detach().cpu().contiguous()
    return f"{t.dtype}{tuple(t.shape)}" + hashlib.sha1(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks (each its own FSDP2 unit): the modules whose class the Hugging Face model
    names in ``_no_split_modules`` (e.g. ``LlamaDecoderLayer``); empty for a model that names none."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    # by class (and base class: FSDP2 renames a wrapped block's class FSDP<name>)
    return [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now (bound to port 0 and released): a process group's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
