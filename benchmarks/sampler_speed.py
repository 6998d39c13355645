"""The lean sampler (rollout.engine=lean) against the HF engine (transformers generate), side by side.

    .venv/bin/python benchmarks/sampler_speed.py                 # 1 thread, fresh tiny model
    .venv/bin/python benchmarks/sampler_speed.py --threads 2 --repeats 9 --bf16 --model PATH

Workloads (one rollout batch each, T = 1, the same seed for both engines in each repeat):
  W1  the default recipe: arithmetic, 32 prompts x G = 8, 6 new tokens;
  W2  arithmetic_chain (4 operands, as benchmarks/vs_trl.py), 16 prompts x G = 8, 32 new tokens.
The engines alternate, one call at a time, after one warm-up call each; the median (min-max) seconds per
rollout and the HF/lean ratio are printed. ``--bf16`` adds the lean engine on a bfloat16 copy of the
weights (rollout.dtype=bfloat16). With the fresh (untrained) tiny model EOS is rare, so completions run
close to the cap; pass warm-started checkpoints (``--model`` for all workloads, ``--w1-model`` /
``--w2-model`` for one) for the recipes' completion lengths (W1 ~3 tokens, W2 ~20-30).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from rlvr.models.load import load_model_and_tokenizer  # noqa: E402
from rlvr.models.tiny import save_tiny  # noqa: E402
from rlvr.rollout.base import SamplingParams  # noqa: E402
from rlvr.rollout.hf import HFRolloutEngine  # noqa: E402
from rlvr.rollout.lean import LeanRolloutEngine  # noqa: E402
from rlvr.tasks import make_task  # noqa: E402

WORKLOADS = {
    "W1": dict(task="arithmetic", options={"min_digits": 1, "max_digits": 2, "ops": "+-"}, prompts=32, G=8, tokens=6),
    "W2": dict(task="arithmetic_chain", options={"min_digits": 1, "max_digits": 2, "ops": "+-", "num_operands": 4},
               prompts=16, G=8, tokens=32),
}


def _time(engine, prompts, params) -> tuple[float, int]:
    t = time.perf_counter()
    r = engine.generate(prompts, params)
    return time.perf_counter() - t, r.num_generated_tokens


def bench(model, tok, name: str, repeats: int, bf16: bool) -> dict:
    w = WORKLOADS[name]
    prompts = [p.prompt for p in make_task(w["task"], **w["options"]).problems("train", w["prompts"])]
    engines = {"hf": HFRolloutEngine(model, tok, batch_size=4096), "lean": LeanRolloutEngine(model, tok, batch_size=4096)}
    if bf16:
        engines["lean_bf16"] = LeanRolloutEngine(model, tok, batch_size=4096, dtype=torch.bfloat16)
    times = {k: [] for k in engines}
    tokens = {k: [] for k in engines}
    for i in range(repeats + 1):
        params = SamplingParams(temperature=1.0, max_new_tokens=w["tokens"], n=w["G"], seed=1000 + i)
        for key, engine in engines.items():
            s, n = _time(engine, prompts, params)
            if i > 0:  # the first round is the warm-up
                times[key].append(s)
                tokens[key].append(n)
    out = {"workload": name, "rows": w["prompts"] * w["G"], "max_new_tokens": w["tokens"]}
    for key in engines:
        out[key] = {"median_s": statistics.median(times[key]), "min_s": min(times[key]), "max_s": max(times[key]),
                    "tokens_per_rollout": statistics.mean(tokens[key])}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default=None, help="a checkpoint folder (default: a fresh built-in tiny model)")
    ap.add_argument("--w1-model", default=None, help="W1's checkpoint (default: --model)")
    ap.add_argument("--w2-model", default=None, help="W2's checkpoint (default: --model)")
    ap.add_argument("--bf16", action="store_true", help="also time the lean engine on a bfloat16 weight copy")
    ap.add_argument("--workloads", default="W1,W2")
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    results = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.workloads.split(","):
            path = getattr(args, f"{name.lower()}_model", None) or args.model
            model, tok = load_model_and_tokenizer(path or save_tiny(os.path.join(d, "tiny"), seed=0))
            model.eval().requires_grad_(False)
            print(f"{name}: model {path or 'fresh tiny'} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
                  "parameters)")
            results.append({**bench(model, tok, name, args.repeats, args.bf16), "model": path or "fresh tiny"})
    keys = [k for k in ("hf", "lean", "lean_bf16") if k in results[0]]
    print(f"{'workload':<10}{'rows x tokens':>14}" + "".join(f"{k + ' s (min-max)':>26}" for k in keys)
          + "".join(f"{'hf/' + k:>15}" for k in keys[1:]))
    for r in results:
        cells = "".join(f"{r[k]['median_s']:>10.4f} ({r[k]['min_s']:.4f}-{r[k]['max_s']:.4f})" for k in keys)
        ratios = "".join(f"{r['hf']['median_s'] / r[k]['median_s']:>14.2f}x" for k in keys[1:])
        print(f"{r['workload']:<10}{str(r['rows']) + ' x ' + str(r['max_new_tokens']):>14}{cells}{ratios}")
    print("tokens per rollout (mean): " + "; ".join(
        f"{r['workload']} " + ", ".join(f"{k} {r[k]['tokens_per_rollout']:.0f}" for k in keys) for r in results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "model": args.model, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
