"""The optimizer every trainer here uses: AdamW with a warm-up, then a constant, linear or cosine rate.

One place for the RL learner (:mod:`rlvr.train.learner`), the critics (:mod:`rlvr.train.critic`) and the
supervised warm start (:mod:`rlvr.warmstart.sft`), below all of them.
"""

from __future__ import annotations

import math
from functools import partial

import torch


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas, warmup_steps: int,
                   schedule: str = "constant", total_steps: int = 0, min_lr_ratio: float = 0.0,
                   impl: str = "for-loop"):
    """AdamW with linear warm-up, then a constant, linear or cosine learning rate.

    ``total_steps`` (optimizer steps) is where a decaying schedule reaches ``min_lr_ratio * lr``.
    ``impl`` (``trainer.adamw_impl``): see :func:`adamw_kwargs`.
    """
    params = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapter only
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                  **adamw_kwargs(params, impl))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, warmup=max(1, warmup_steps), schedule=schedule, total=total_steps,
                           floor=min_lr_ratio))
    return optimizer, scheduler


def adamw_kwargs(params, impl: str = "auto") -> dict:
    """``fused`` / ``foreach`` arguments of ``torch.optim.AdamW`` for ``impl``: ``fused`` (one kernel over
    all parameters), ``foreach`` (multi-tensor ops), ``for-loop`` (torch's reference loop, one tensor at a
    time) or ``auto``: fused where torch has the kernel for every parameter (floating point, on a device
    torch's fused AdamW supports: CPU and CUDA in torch 2.13), else foreach. All three compute the same
    update up to float reassociation (tests/train/test_optimizer.py)."""
    if impl == "for-loop":
        return {"foreach": False}
    if impl == "foreach":
        return {"foreach": True}
    if impl == "fused" or impl == "auto":
        try:
            from torch.optim.optimizer import _get_fused_kernels_supported_devices

            devices = set(_get_fused_kernels_supported_devices())
        except ImportError:  # pragma: no cover - an old torch
            devices = set()
        ok = bool(params) and all(p.dtype.is_floating_point and p.device.type in devices for p in params)
        if ok:
            return {"fused": True}
        if impl == "fused":
            raise ValueError("trainer.adamw_impl = 'fused': this torch has no fused AdamW for these parameters "
                             f"(devices with the kernel: {sorted(devices)}); use auto or foreach")
        return {"foreach": True}
    raise ValueError(f"unknown AdamW implementation {impl!r}")


def lr_factor(step: int, warmup: int, schedule: str, total: int, floor: float) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based)."""
    if step + 1 < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step + 1 - warmup) / (total - warmup))
    decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * decay
