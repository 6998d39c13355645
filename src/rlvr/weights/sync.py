"""Exact weight synchronisation from the learner to rollout workers: full or sparse payloads.

The learner trains fp32 weights; every rollout worker holds its own copy in the engine's dtype
(``float32`` or ``bfloat16``), in another thread, process or Ray actor. After each publication the
worker's copy is, for every tensor of the state dict, **bit-identical** to
``learner_tensor.to(engine_dtype)`` (round-to-nearest-even cast; tensors that are not floating point
keep their own dtype). Two methods:

``full``
    Every tensor is sent dense in the engine dtype. Self-contained; the bf16 payload is half the fp32 one.

``sparse``
    Lossless sparse patches after SparseRL-Sync (arXiv 2605.07330) and PULSE (arXiv 2602.03839): at RL
    learning rates most Adam steps fall below the bf16 rounding step, so only a few percent of the bf16
    elements change per update (an fp32 copy changes in ~100% of elements, so sparse sync pays only for
    a bf16 rollout copy). Per tensor, the elements whose *bit pattern* in the engine dtype differs from
    the previously published version are sent as int32 flat indices plus their *new* values (patches,
    not additive deltas: adding a delta in bf16 is not exact, overwriting bits is). The worker writes
    ``flat[idx] = values`` through integer views, so -0.0/+0.0 and NaN payloads are copied exactly.

Bytes on the wire, per tensor of ``numel`` elements and ``itemsize`` bytes per element (engine dtype):

* sparse patch = ``changed * (4 + itemsize)`` bytes (int32 index + value; 6 B per element for bf16),
* dense        = ``numel * itemsize`` bytes,
* the tensor is sent dense (the *dense fallback*) when sparse > dense, i.e. above a density of
  itemsize / (4 + itemsize): 1/3 for bf16, 1/2 for fp32. Unchanged tensors are not sent at all.
  (Tensors of 2**31 elements or more use int64 indices, 8 + itemsize bytes per changed element.)

The first publication, and one whose tensors' names, shapes or dtypes differ from the previous one, is
a full *anchor* (``base_version=None``). The publisher keeps the last ``history`` patches, so a worker
that skipped versions receives the chain of patches it missed (oldest first), or the full anchor of the
latest version when it is too far behind, new (version None) or the method is ``full``.

Payloads hold plain CPU torch tensors in dataclasses, so they pickle (Ray object store). Treat them
as read-only: dense values may share storage with the publisher's snapshot. Patches are grouped in
buckets of about ``bucket_bytes`` (one transfer per bucket, SparseRL-Sync's bucketing).
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

import torch

__all__ = [
    "SYNC_METHODS", "TensorPatch", "WeightPayload", "WeightPublisher", "WeightReceiver",
    "WeightSyncError", "state_checksum", "changed_fraction",
]

SYNC_METHODS = ("full", "sparse")

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_INT32_MAX_NUMEL = 2 ** 31 - 1


class WeightSyncError(RuntimeError):
    """A payload cannot be applied exactly: a broken version chain, a checksum mismatch after applying
    (debug mode), or a payload that does not fit the receiver's tensors (name, shape or dtype)."""


@dataclass
class TensorPatch:
    """One tensor's update (SparseRL-Sync / PULSE patch format).

    ``dense``: ``values`` is the whole tensor, flat, in the engine dtype, ``indices`` is None.
    ``sparse``: ``values`` are the new values of the changed elements and ``indices`` their flat
    positions (int32; int64 for tensors of 2**31 elements or more).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    values: torch.Tensor
    indices: torch.Tensor | None = None

    def nbytes(self) -> int:
        n = self.values.numel() * self.values.element_size()
        if self.indices is not None:
            n += self.indices.numel() * self.indices.element_size()
        return n


@dataclass
class WeightPayload:
    """What one publication sends; its fields double as the sync statistics to log.

    ``version`` is the policy version after applying it; ``base_version`` the version it patches
    (None: a self-contained full/anchor payload). ``nbytes`` is the sum of the patches' bytes,
    ``dense_nbytes`` the size of the whole state dict in the engine dtype, ``changed``/``numel`` the
    changed elements since the base (all of them for a full payload). ``checksum`` (debug only) is
    :func:`state_checksum` of the weights after applying.
    """

    version: int
    base_version: int | None
    buckets: list[list[TensorPatch]] = field(default_factory=list)
    nbytes: int = 0
    dense_nbytes: int = 0
    changed: int = 0
    numel: int = 0
    checksum: str | None = None

    def patches(self):
        for bucket in self.buckets:
            yield from bucket

    @property
    def is_anchor(self) -> bool:
        return self.base_version is None


# ------------------------------------------------------------------------------------------------
# bit helpers


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The same memory seen as an integer tensor of the same element size (same shape and strides)."""
    int_dtype = _INT_OF_SIZE.get(t.element_size())
    if int_dtype is None:
        raise TypeError(f"weight sync cannot handle dtype {t.dtype} (element size {t.element_size()})")
    return t if t.dtype == int_dtype else t.view(int_dtype)


def _target_dtype(t: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    return dtype if (dtype is not None and t.is_floating_point()) else t.dtype


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``t`` in the engine dtype (floating point only), contiguous, detached; may alias ``t``."""
    return t.detach().to(_target_dtype(t, dtype)).contiguous()


def _owned_cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Like :func:`_cast` but never sharing storage with ``t`` (the learner keeps updating it)."""
    c = _cast(t, dtype)
    if c.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
        c = c.clone()
    return c


def _index_size(numel: int) -> int:
    return 4 if numel <= _INT32_MAX_NUMEL else 8


def _to_cpu(t: torch.Tensor) -> torch.Tensor:
    return t if t.device.type == "cpu" else t.cpu()


def state_checksum(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None) -> str:
    """blake2b over every tensor's raw bytes after casting floating tensors to ``dtype`` (None: as
    stored), tensors sorted by name; each tensor also contributes its name, dtype and shape."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(state_dict):
        t = _cast(state_dict[name], dtype)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_to_cpu(t).reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def changed_fraction(prev: dict[str, torch.Tensor], new: dict[str, torch.Tensor],
                     dtype: torch.dtype | None) -> float:
    """Fraction of all elements whose bits differ between ``prev`` and ``new`` after casting both to
    ``dtype`` (the sparsity that SparseRL-Sync / PULSE exploit; ~1.0 for float32, a few % for bf16)."""
    changed = total = 0
    for name, t in new.items():
        a, b = _cast(prev[name], dtype), _cast(t, dtype)
        if a.shape != b.shape:
            raise ValueError(f"{name}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
        changed += int((_bits(a) != _bits(b)).sum())
        total += b.numel()
    return changed / total if total else 0.0


def _bucket(patches: list[TensorPatch], bucket_bytes: int) -> list[list[TensorPatch]]:
    """Group patches in state-dict order into buckets of at most ``bucket_bytes`` (a single larger
    patch gets a bucket of its own)."""
    buckets: list[list[TensorPatch]] = []
    cur: list[TensorPatch] = []
    size = 0
    for p in patches:
        n = p.nbytes()
        if cur and size + n > bucket_bytes:
            buckets.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += n
    if cur:
        buckets.append(cur)
    return buckets


# ------------------------------------------------------------------------------------------------
# learner side


class WeightPublisher:
    """Learner side: encodes each new version of the weights as a full or sparse payload.

    Sparse payloads follow SparseRL-Sync (arXiv 2605.07330) and PULSE (arXiv 2602.03839): bitwise
    changes in the engine dtype since the last published version, as int32 indices + new values, with a
    per-tensor dense fallback; see the module docstring for the byte formula.
    """

    def __init__(self, method: str = "full", dtype: torch.dtype = torch.float32,
                 bucket_bytes: int = 64 << 20, history: int = 16, debug: bool = False):
        if method not in SYNC_METHODS:
            raise ValueError(f"method must be one of {SYNC_METHODS}, got {method!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
        if bucket_bytes <= 0:
            raise ValueError("bucket_bytes must be positive")
        if history < 0:
            raise ValueError("history must be >= 0")
        self.method = method
        self.dtype = dtype
        self.bucket_bytes = int(bucket_bytes)
        self.history = int(history)
        self.debug = debug
        self._version: int | None = None
        self._snapshot: dict[str, torch.Tensor] | None = None   # last published weights, engine dtype
        self._checksum: str | None = None
        self._chain: deque[WeightPayload] = deque(maxlen=self.history)  # sparse patches, oldest first
        self._anchor: WeightPayload | None = None                  # full payload of self._version

    @property
    def version(self) -> int | None:
        return self._version

    # -- encoding ---------------------------------------------------------------------------------

    def _full_payload(self, snapshot: dict[str, torch.Tensor], version: int) -> WeightPayload:
        patches = [TensorPatch(name, "dense", tuple(t.shape), _to_cpu(t).reshape(-1), None)
                   for name, t in snapshot.items()]
        nbytes = sum(p.nbytes() for p in patches)
        numel = sum(t.numel() for t in snapshot.values())
        return WeightPayload(version=version, base_version=None,
                             buckets=_bucket(patches, self.bucket_bytes), nbytes=nbytes,
                             dense_nbytes=nbytes, changed=numel, numel=numel, checksum=self._checksum)

    def _compatible(self, new: dict[str, torch.Tensor]) -> bool:
        old = self._snapshot
        if old is None or list(old) != list(new):
            return False
        return all(old[k].shape == new[k].shape and old[k].dtype == new[k].dtype
                   and old[k].device == new[k].device for k in new)

    def publish(self, state_dict: dict[str, torch.Tensor], version: int) -> WeightPayload:
        """Encode the learner's current weights as ``version`` (strictly increasing).

        ``full``: every tensor dense in the engine dtype. ``sparse``: per tensor, the elements whose bit
        pattern in the engine dtype differs from the previously published version, as int32 flat indices
        + new values; a tensor whose sparse form is larger than dense (``changed*(4+itemsize) >
        numel*itemsize``) is sent dense. The first publication, and one whose names/shapes/dtypes
        differ from the previous one, is a full anchor (``base_version=None``).
        """
        version = int(version)
        if self._version is not None and version <= self._version:
            raise ValueError(f"version must increase: published {self._version}, got {version}")
        with torch.no_grad():
            new = {name: _owned_cast(t, self.dtype) for name, t in state_dict.items()}
            self._checksum = state_checksum(new, None) if self.debug else None
            if self.method == "full" or not self._compatible(new):
                payload = self._full_payload(new, version)
                self._chain.clear()
                self._anchor = payload
            else:
                payload = self._sparse_payload(self._snapshot, new, version)
                self._chain.append(payload)
                self._anchor = None  # built on demand from the snapshot
        self._snapshot = new  # tensors are replaced, never mutated, so payloads may alias them
        self._version = version
        return payload

    def _sparse_payload(self, old: dict[str, torch.Tensor], new: dict[str, torch.Tensor],
                        version: int) -> WeightPayload:
        patches: list[TensorPatch] = []
        changed_total = numel_total = dense_total = 0
        for name, t in new.items():
            numel, itemsize = t.numel(), t.element_size()
            numel_total += numel
            dense_total += numel * itemsize
            new_bits = _bits(t).reshape(-1)
            mask = new_bits != _bits(old[name]).reshape(-1)
            changed = int(mask.sum())
            if changed == 0:
                continue
            changed_total += changed
            if changed * (_index_size(numel) + itemsize) > numel * itemsize:  # dense fallback
                patches.append(TensorPatch(name, "dense", tuple(t.shape), _to_cpu(t).reshape(-1), None))
                continue
            idx = mask.nonzero().squeeze(1)
            values = new_bits.index_select(0, idx).view(t.dtype)
            idx = idx.to(torch.int32) if numel <= _INT32_MAX_NUMEL else idx
            patches.append(TensorPatch(name, "sparse", tuple(t.shape), _to_cpu(values), _to_cpu(idx)))
        return WeightPayload(version=version, base_version=self._version,
                             buckets=_bucket(patches, self.bucket_bytes),
                             nbytes=sum(p.nbytes() for p in patches), dense_nbytes=dense_total,
                             changed=changed_total, numel=numel_total, checksum=self._checksum)

    # -- serving workers --------------------------------------------------------------------------

    def latest_anchor(self) -> WeightPayload:
        """A self-contained full payload of the latest version (built once per version, then cached)."""
        if self._snapshot is None:
            raise WeightSyncError("nothing has been published yet")
        if self._anchor is None or self._anchor.version != self._version:
            self._anchor = self._full_payload(self._snapshot, self._version)
        return self._anchor

    def payloads_since(self, version: int | None) -> list[WeightPayload]:
        """What a worker holding ``version`` must apply, oldest first, to reach the latest version: the
        chain of sparse patches, or ``[latest full anchor]`` when ``version`` is None, older than the kept
        history, unknown, or the method is ``full``. Empty if it is up to date (or nothing was published)."""
        if self._version is None or version == self._version:
            return []
        if version is not None and self.method == "sparse":
            chain: list[WeightPayload] = []
            for p in reversed(self._chain):
                chain.append(p)
                if p.base_version == version:
                    return chain[::-1]
        return [self.latest_anchor()]


# ------------------------------------------------------------------------------------------------
# worker side


class WeightReceiver:
    """Worker side: applies payloads in place, writing raw bits (SparseRL-Sync / PULSE exact patches)."""

    def __init__(self, debug: bool = False):
        self.debug = debug
        self.version: int | None = None

    @staticmethod
    def _tensors(model_or_state_dict) -> dict[str, torch.Tensor]:
        if isinstance(model_or_state_dict, torch.nn.Module):
            return model_or_state_dict.state_dict()  # shares storage with parameters and buffers
        return model_or_state_dict

    def _check(self, sd: dict[str, torch.Tensor], payloads: list[WeightPayload]) -> None:
        expected = self.version
        for p in payloads:
            if p.base_version is not None and p.base_version != expected:
                raise WeightSyncError(f"broken chain: payload v{p.version} patches v{p.base_version}, "
                                      f"but the receiver holds v{expected}")
            names = set()
            for patch in p.patches():
                names.add(patch.name)
                dst = sd.get(patch.name)
                if dst is None:
                    raise WeightSyncError(f"payload v{p.version}: unknown tensor {patch.name!r}")
                if tuple(dst.shape) != tuple(patch.shape) or dst.dtype != patch.values.dtype:
                    raise WeightSyncError(
                        f"{patch.name}: receiver holds {dst.dtype}{tuple(dst.shape)}, payload sends "
                        f"{patch.values.dtype}{tuple(patch.shape)}")
                n = dst.numel() if patch.kind == "dense" else patch.indices.numel()
                if patch.kind not in ("dense", "sparse") or patch.values.numel() != n:
                    raise WeightSyncError(f"{patch.name}: malformed {patch.kind!r} patch")
            if p.base_version is None and names != set(sd):
                missing = sorted(set(sd) - names)
                raise WeightSyncError(f"anchor v{p.version} does not cover the receiver's tensors "
                                      f"{missing[:5]}{'...' if len(missing) > 5 else ''}")
            expected = p.version

    @staticmethod
    def _write(dst: torch.Tensor, patch: TensorPatch) -> None:
        dbits = _bits(dst)
        src = _bits(patch.values).to(dst.device)
        if patch.kind == "dense":
            dbits.copy_(src.view(dbits.shape))
            return
        idx = patch.indices.to(dst.device, torch.int64)
        if dst.is_contiguous():
            dbits.view(-1).index_copy_(0, idx, src)
        else:
            flat = dbits.reshape(-1).index_copy_(0, idx, src)
            dbits.copy_(flat.view(dbits.shape))

    def apply(self, model_or_state_dict, payloads: list[WeightPayload]) -> int | None:
        """Apply ``payloads`` in order, in place, by writing raw bits through integer views (so -0.0/+0.0
        and NaN payloads are copied exactly). All payloads are checked before anything is written; raises
        :class:`WeightSyncError` on a broken chain (``base_version`` != the version held) or a mismatched
        tensor, and, in debug mode, when the checksum after a payload differs (the receiver's version is
        then reset to None so the next sync sends a full anchor). Returns the new version."""
        sd = self._tensors(model_or_state_dict)
        self._check(sd, payloads)
        with torch.no_grad():
            for p in payloads:
                for patch in p.patches():
                    self._write(sd[patch.name], patch)
                if self.debug and p.checksum is not None:
                    got = state_checksum(sd, None)
                    if got != p.checksum:
                        self.version = None
                        raise WeightSyncError(f"checksum mismatch after applying v{p.version}: "
                                              f"{got} != {p.checksum}")
                self.version = p.version
        return self.version
