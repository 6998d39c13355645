"""The GPU path in one prepared script (issue: a learner that spans devices), for a lent H100/H200; under 8 minutes.

    python benchmarks/gpu_check.py                    # on the device machine: run.device=cuda
    python benchmarks/gpu_check.py --device cpu --small   # the same steps, small, on a CPU (checks the script)

Runs, each in this process, one after the other, with the peak memory reset between them:
1. the default recipe (configs/grpo_arithmetic_tiny.yaml) on the device, one learner process;
2. a ~100M-parameter Qwen3-shaped stand-in (random weights, a 32k byte-level BPE vocabulary, a chat template) as
   an FSDP2 learner group of one (trainer.dist.engine=fsdp2) with bf16 mixed precision (bf16 compute, fp32
   reductions, fp32 master weights and AdamW state: trainer.dist.mixed_precision=bf16), full fine-tuning;
3. the same with LoRA (r 16 on the attention and MLP projections);
4. run 1 with the vLLM engine, if vLLM imports there.
For each: seconds per step, generated tokens/s, trained tokens/s, peak device memory, and the update's MFU
against the card's bf16 dense peak (6 x parameters x trained tokens / update seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch

#: bf16 dense tensor-core peak (FLOP/s) by device name; MFU is left out for any other device
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
QWEN3_100M = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=4, max_position_embeddings=1024)
QWEN3_SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512)


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(name: str, config_path: str, overrides: list[str], device: str, out: Path) -> dict:
    from rlvr.config import load_config
    from rlvr.models.load import load_tokenizer
    from rlvr.train.loop import train

    reset_peak(device)
    t0 = time.perf_counter()
    config = load_config(config_path, [*overrides, f"run.device={device}", f"run.output_dir={out / name}",
                                       "logging.plots=false", "logging.progress=false", "eval.num_problems=16"])
    result = train(config, log=lambda *a: None)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "time_step" in r][1:]  # the first step warms up kernels and caches
    samples = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    tok = load_tokenizer(str(ckpt_dir(result.run_dir)))
    prompt_tokens = sum(len(tok(s["prompt"])["input_ids"]) for s in samples) / max(1, len(samples))
    rows = config.rollout.prompts_per_step * config.rollout.group_size
    mean = lambda key: sum(r.get(key, 0.0) for r in steps) / max(1, len(steps))
    trained_tokens = rows * (prompt_tokens + mean("response_length")) * config.trainer.ppo_epochs
    ckpt = ckpt_dir(result.run_dir)
    n_params = count_params(ckpt if (ckpt / "config.json").exists() else config.model.path)  # LoRA: the base's
    peak = peak_flops(device)
    train_s = mean("time_train")
    mfu = 6 * n_params * trained_tokens / train_s / peak if peak and train_s > 0 else None
    return {"run": name, "params_M": n_params / 1e6, "s_per_step": mean("time_step"),
            "gen_tok_s": mean("tokens_per_second"), "train_tok_s": trained_tokens / train_s if train_s else 0.0,
            "peak_mem_MB": peak_mb(device), "mfu": mfu, "wall_s": wall,
            "accuracy_after": result.after.get("greedy_accuracy")}


def count_params(folder) -> int:
    """Parameters of the model whose config.json is in ``folder`` (built on the meta device: no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    return sum(p.numel() for p in model.parameters())


def ckpt_dir(run_dir: Path) -> Path:
    return sorted((run_dir / "checkpoints").iterdir())[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="small models and few steps (check the script on a CPU)")
    args = ap.parse_args()
    device, small = args.device, args.small
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --small to check the script")
    out = Path(tempfile.mkdtemp(prefix="rlvr_gpu_check_"))
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if device.startswith('cuda') else device}")
    from rlvr.models.stand_in import save_stand_in

    vocab = 1200 if small else 32000
    t0 = time.perf_counter()
    qwen = str(save_stand_in("qwen3_instruct", out / "qwen3", vocab_size=vocab, **(QWEN3_SMALL if small else QWEN3_100M)))
    print(f"stand-in built in {time.perf_counter() - t0:.0f} s: {qwen}")
    steps = 3 if small else 12
    base = [f"trainer.steps={steps}", f"logging.checkpoint_every={steps}", "logging.num_samples=4",
            "logging.samples_every=1"]
    stand_in = [*base, f"model.path={qwen}", "trainer.dist.mixed_precision=bf16", "rollout.max_new_tokens=32",
                "rollout.prompts_per_step=8" if small else "rollout.prompts_per_step=64", "rollout.group_size=8",
                "trainer.micro_batch_size=64", "reward.weights={correct: 1.0, format: 1.0}", "trainer.lr=1e-5",
                "trainer.skip_zero_advantage=never"]  # a random model earns no reward: train every row anyway
    runs = [("default_recipe", "configs/grpo_arithmetic_tiny.yaml", base),
            ("qwen3_100m_fsdp2_full", "configs/grpo_arithmetic_tiny.yaml", [*stand_in, "trainer.dist.engine=fsdp2"]),
            ("qwen3_100m_fsdp2_lora", "configs/grpo_arithmetic_tiny.yaml",
             [*stand_in, "trainer.dist.engine=fsdp2", "model.lora.enabled=true", "model.lora.r=16", "trainer.lr=1e-4"])]
    try:
        import vllm  # noqa: F401

        runs.append(("default_recipe_vllm", "configs/grpo_arithmetic_tiny.yaml", [*base, "rollout.engine=vllm"]))
    except Exception as err:  # noqa: BLE001 - any import failure means: not there
        print(f"vllm: not run ({type(err).__name__}: {err})")
    header = f"{'run':<24} {'params M':>8} {'s/step':>7} {'gen tok/s':>10} {'train tok/s':>11} {'peak MB':>8} " \
             f"{'MFU':>6} {'wall s':>7} {'acc after':>9}"
    print(header, flush=True)
    for name, config, overrides in runs:
        try:
            r = run(name, config, overrides, device, out)
        except Exception as err:  # noqa: BLE001 - report and go on to the next run
            print(f"{name:<24} failed: {type(err).__name__}: {str(err)[:300]}", flush=True)
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        acc = f"{100 * r['accuracy_after']:.1f}%" if r["accuracy_after"] is not None else "-"
        print(f"{name:<24} {r['params_M']:>8.1f} {r['s_per_step']:>7.2f} {r['gen_tok_s']:>10,.0f} "
              f"{r['train_tok_s']:>11,.0f} {r['peak_mem_MB']:>8.0f} {mfu:>6} {r['wall_s']:>7.0f} {acc:>9}", flush=True)


if __name__ == "__main__":
    main()
