"""How rlvr's cost grows with the work: s/step (generate / score / train) and peak memory as the completion
length and the vocabulary grow, one at a time, beside TRL's GRPOTrainer on identical work where it runs.

    python benchmarks/scaling.py [--lengths 32,128,512] [--vocabs 100,32768,151936] [--warmup 1] [--steps 2]
                                 [--no-trl] [--json OUT]

Every cell is benchmarks/vs_trl.py's W3 (read its docstring for what "identical work" means and how a step
is timed: the same worker processes, hooks and memory readings) with one thing changed:

* completion length C (``rollout.max_new_tokens``; the random-weight model never stops early, so every
  completion is exactly C tokens) at the 32k vocabulary;
* vocabulary V (a byte-level BPE tokenizer of exactly V tokens trained in code, and the model's tied
  embedding / LM head of V x 384; V=100 keeps only the bytes its corpus uses, as the built-in tiny model's
  99-symbol vocabulary does) at C=128.

The model is otherwise W3's (Qwen3-shaped, hidden 384, 4 layers, 6/2 GQA heads; rlvr.models.stand_in),
16 rows a step (4 prompts x 4), 4 minibatches, fp32, one process at a time, TRL and rlvr alternating. The
second table divides each part of the step by its value at the axis' smallest cell, beside the ratio of the
model FLOPs (2 N per generated token, 8 N per trained token, N the linear parameters): a part that grows
faster than its FLOPs grows from something else (attention over a longer context, the sampler's per-step
overhead, a [B, T, V] tensor).

A full run (5 cells x 2 sides x 3 steps) takes about 15 minutes on the 2-core CPU; ``make bench`` runs it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_trl  # noqa: E402  (the workers, the model builder and the memory readings)

BASE_VOCAB, BASE_LENGTH = 32768, 128
#: W3 at 16 rows: the cells vary only max_new_tokens and the model's vocabulary
OVERRIDES = [o for o in vs_trl.WORKLOADS["W3"]["overrides"]
             if not o.startswith(("rollout.max_new_tokens", "rollout.prompts_per_step"))] + [
    "rollout.prompts_per_step=4", "eval.num_problems=2"]


def cells(lengths: list[int], vocabs: list[int], base_vocab: int = BASE_VOCAB,
          base_length: int = BASE_LENGTH) -> list[tuple[str, int, int]]:
    """(axis, V, C) of every cell: the length axis at the base vocabulary, the vocabulary axis at the base
    length; the base cell once (on the length axis, and reused for the vocabulary axis)."""
    out = [("length", base_vocab, c) for c in lengths]
    out += [("vocab", v, base_length) for v in vocabs if not (v == base_vocab and base_length in lengths)]
    return out


def build(vocab: int, folder: Path) -> str:
    from transformers.utils import logging as hf_logging

    from rlvr.models.stand_in import save_stand_in

    hf_logging.disable_progress_bar()

    path = folder / f"qwen3_v{vocab}"
    if not (path / "config.json").exists():
        save_stand_in("qwen3_instruct", path, **{**vs_trl.W3_ARCH, "vocab_size": vocab})
    return str(path)


def part_means(run_summary: dict) -> dict:
    """wall / gen / score / train medians of one (cell, side) aggregate."""
    return {k: run_summary[k]["median"] for k in ("wall", "gen", "score", "train")}


def growth_table(rows: list[dict], sides: list[str]) -> str:
    """Each part of the step divided by its value at the smallest cell of its axis, beside the FLOPs' ratio."""
    lines = [f"{'axis':<8}{'cell':>10}{'side':>6}{'step':>8}{'generate':>10}{'train':>8}{'peak RSS':>10}"
             f"{'gen FLOPs':>11}{'train FLOPs':>13}"]
    for axis in ("length", "vocab"):
        mine = [r for r in rows if axis in r["axes"]]
        mine.sort(key=lambda r: r["C"] if axis == "length" else r["V"])
        if len(mine) < 2:
            continue
        first = mine[0]
        for r in mine:
            for side in sides:
                a, b = r["sides"].get(side), first["sides"].get(side)
                if not a or not b:
                    continue
                f = lambda k: a["parts"][k] / b["parts"][k] if b["parts"][k] > 0 else float("nan")  # noqa: E731
                fl = lambda k: a["flops"][k] / b["flops"][k] if b["flops"][k] > 0 else float("nan")  # noqa: E731
                cell = f"C={r['C']}" if axis == "length" else f"V={r['V']}"
                lines.append(f"{axis:<8}{cell:>10}{'TRL' if side == 'trl' else 'rlvr':>6}{f('wall'):>7.2f}x"
                             f"{f('gen'):>9.2f}x{f('train'):>7.2f}x"
                             f"{a['peak_rss_mib'] / b['peak_rss_mib']:>9.2f}x{fl('gen'):>10.2f}x{fl('train'):>12.2f}x")
    return "\n".join(lines)


def cost_table(rows: list[dict], sides: list[str]) -> str:
    head = (f"{'cell':<18}{'side':<6}{'s/step':>8}{'generate':>10}{'score':>8}{'train':>8}{'peak RSS MiB':>14}"
            f"{'growth MiB':>12}{'TRL/rlvr s':>12}{'rlvr/TRL mem':>14}")
    lines = [head, "-" * len(head)]
    for r in rows:
        label = f"V={r['V']}, C={r['C']}"
        for i, side in enumerate(sides):
            a = r["sides"].get(side)
            if not a:
                continue
            p = a["parts"]
            ratio = mem = ""
            if side == "rlvr" and "trl" in r["sides"]:
                t = r["sides"]["trl"]
                ratio = f"{t['parts']['wall'] / p['wall']:.2f}x"
                mem = f"{a['peak_rss_mib'] / t['peak_rss_mib']:.2f}x"
            lines.append(f"{label if i == 0 else '':<18}{'TRL' if side == 'trl' else 'rlvr':<6}{p['wall']:>8.2f}"
                         f"{p['gen']:>10.2f}{p['score']:>8.2f}{p['train']:>8.2f}{a['peak_rss_mib']:>14.0f}"
                         f"{a['peak_rss_mib'] - a['rss_loaded_mib']:>12.0f}{ratio:>12}{mem:>14}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="32,128,512")
    ap.add_argument("--vocabs", default="100,32768,151936")
    ap.add_argument("--base-vocab", type=int, default=BASE_VOCAB, help="the vocabulary of the length axis")
    ap.add_argument("--base-length", type=int, default=BASE_LENGTH, help="the completion length of the vocabulary axis")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-trl", action="store_true", help="rlvr only (also when TRL is not installed)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer hidden-64 model (tests; numbers mean nothing)")
    ap.add_argument("--json", help="write every number here")
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    vocabs = [int(x) for x in args.vocabs.split(",")]
    sides = ["rlvr"] if args.no_trl or vs_trl.trl_version() is None else ["trl", "rlvr"]
    if args.tiny:
        vs_trl.W3_ARCH.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              head_dim=16)
    info = vs_trl.versions()
    print(f"scaling: rlvr {info['rlvr']} @ {info['git']}" + (f" vs TRL {info['trl']}" if "trl" in sides else
          " (TRL not run)") + f"; torch {info['torch']}, {args.threads} threads, fp32; {args.warmup} warm-up + "
          f"{args.steps} timed steps a run", flush=True)
    rows, report = [], {"versions": info, "args": vars(args), "cells": []}
    with tempfile.TemporaryDirectory(prefix="rlvr-scaling-") as tmp:
        for axis, V, C in cells(lengths, vocabs, args.base_vocab, args.base_length):
            t0 = time.perf_counter()
            path = build(V, Path(tmp))
            overrides = (vs_trl.QUIET + OVERRIDES + [f"rollout.max_new_tokens={C}", f"model.path={path}",
                                                     f"run.seed={args.seed}",
                                                     f"trainer.steps={args.warmup + args.steps}"])
            base = (V, C) == (args.base_vocab, args.base_length) and axis == "length"
            row = {"axes": [axis] + (["vocab"] if base else []), "V": V, "C": C,
                   "sides": {}}
            order = sides if len(rows) % 2 == 0 else sides[::-1]
            for side in order:
                spec = {"side": side, "seed": args.seed, "warmup": args.warmup,
                        "total_steps": args.warmup + args.steps, "overrides": overrides}
                run = vs_trl.run_worker(spec, args.threads)
                agg = vs_trl.aggregate([run])
                n = run["linear_params"]
                steps = run["steps"][args.warmup:]
                flops = [vs_trl.step_model_flops(n, s) for s in steps]
                row["sides"][side] = {"parts": part_means(agg), "peak_rss_mib": run["peak_rss_mib"],
                                      "rss_loaded_mib": run["rss_loaded_mib"], "linear_params": n,
                                      "flops": {k: statistics.mean(f[k] for f in flops) for k in ("gen", "train")},
                                      "tokens_per_step": agg.get("tokens_per_step")}
            parts = ", ".join(f"{s} {row['sides'][s]['parts']['wall']:.2f} s/step" for s in sides)
            print(f"  V={V:>6} C={C:>4}: {parts} ({time.perf_counter() - t0:.0f} s)", flush=True)
            rows.append(row)
    print()
    print(cost_table(rows, sides))
    print()
    print("growth from each axis' smallest cell (the FLOP columns: what the model's matmuls alone predict)")
    print(growth_table(rows, sides))
    report["cells"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
