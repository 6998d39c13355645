"""rlvr against TRL's GRPOTrainer on identical work: s/step, where the time goes, FLOP utilisation, P2.

    pip install -e '.[bench]'       # trl, accelerate, datasets: only this benchmark needs them
    python benchmarks/vs_trl.py [--workloads W1,W2,W3] [--warmup N] [--steps N] [--repeats 2] [--p2] [--json OUT]

Workloads (the same model on both sides):

* W1, the default recipe (configs/grpo_arithmetic_tiny.yaml): arithmetic, 32 prompts x 8, ~3-token answers;
* W2, ``arithmetic_chain`` with 4 operands (the workload of benchmarks/async_vs_sync.py, whose warm start it
  shares): 16 prompts x 8, ~20-30-token completions;
* W3, realistic shapes: a Qwen3-shaped model of 18.9M parameters with a 32k-token byte-level BPE vocabulary
  (rlvr.models.stand_in, built in code at random weights), 8 prompts x 4, 160-token completions, a dense
  reward (see ``WORKLOADS``); 1 warm-up + 3 timed steps a run by default (about 10 minutes in all).

W1 and W2 use the warm-started built-in tiny model (``rlvr sft`` builds and caches it).

Identical work: one step is one rollout batch (prompts x G completions, temperature 1, the same prompts in
the same order: TRL's dataset is rlvr's prompt stream for that seed, read unshuffled) scored by the same
exact-match verifier (rlvr's task verifier wrapped as a TRL reward function), then one pass of
``trainer.num_minibatches`` = 4 optimizer steps over it. TRL: ``steps_per_generation=4``,
``per_device_train_batch_size`` = a quarter of the batch, no gradient accumulation, ``num_iterations=1``,
``beta=0``, ``loss_type="bnpo"`` (token mean over the minibatch: rlvr's ``token-mean``), the recipe's lr,
warm-up, clip range, max_grad_norm, Adam betas and ``max_completion_length``; fp32 (``bf16=False``: TRL's
default is bf16 autocast), no gradient checkpointing (TRL's default recomputes the forward), no eval, no
logging, no checkpoints. The work is the same RL computation, not the same kernels: each side keeps its own
implementation (TRL: HF ``generate``, an old-log-prob forward whenever ``steps_per_generation`` exceeds
the gradient accumulation, its chunked log-prob head, fused AdamW; rlvr: whatever its defaults are: the
lean sampler, reusing the sampler's log-probs as ``old_logp`` where provably equal, no forward/backward for
rows of zero advantage (their gradient is exactly zero), each prompt once and no padding in the training
forward), and the token counts below show what each one ran.

How it is timed, and why: every run is a fresh subprocess of this script (same interpreter, same thread
count, nothing else running: the runs go one at a time, TRL and rlvr alternating, ABBA...), which calls each
framework's own public entry point: ``rlvr.train.loop.train`` (what ``rlvr train`` runs) and
``GRPOTrainer.train()``, with the same environment (rlvr's CLI-only busy-machine OpenMP setting,
``rlvr.threads.configure_openmp``, is not applied; it does nothing on an idle machine anyway). A fresh
process per run keeps the allocator, thread pools and imports of one side from colouring the other, and the
public entry points measure what a user gets, overheads included. One step's time is the wall-clock
between two consecutive step boundaries seen by a hook on each side (rlvr: its metrics record being
written; TRL: ``on_step_end`` of every 4th optimizer step), so everything either framework does per step
is counted (the hooks add a few Python calls a step), and nothing else (model loading, the first
``--warmup`` steps, rlvr's before/after evaluation, the final checkpoint). The split: generation (rlvr
``time_generate``; TRL ``_generate``: tokenise, ``generate``, decode, on both), scoring (rlvr ``time_score``; TRL
``_calculate_rewards``), and training = the rest of the step (old-log-prob forward, advantages, 4
forward/backward/AdamW steps, per-step overhead).

Memory: each side's peak resident set (``getrusage``), its resident set once the model was loaded, and the
growth between them (what the run itself holds at its peak: activations, logits, optimizer state, caches).

The physical limit: a 2048^3 GEMM in fp32 and bf16 (smaller where one would take over a second: bf16 on a CPU
without native bf16) on this CPU (same thread count) gives the peak; generation
and training FLOP utilisation are printed beside it. FLOPs = 2 N per token of a forward without gradient
(sampling, old log-probs) and 6 N per token of a forward that is backpropagated, N the parameters of the
model's linear layers (embedding lookups and attention scores not counted), over the tokens each side
actually ran through the model: a forward hook on the input embedding counts them (prefill rows x prompt
width, then one token per row per decode step; padding included; a shared prompt prefix or a skipped
old-log-prob forward counts only what ran), by phase. The same hook on both sides; where it sees no
generation (an engine with its own copy of the weights) the generation count falls back to the batch shape,
B x (P + C - 1). The table also prints those token counts per step, so work one side removes shows there.

P2 (``--p2``): wall-clock (evaluation excluded) until held-out greedy accuracy reaches its start + 10 points
on W1, 3 seeds a side, the same evaluator (rlvr's ``evaluate`` on the same 200 held-out problems) every
``--p2-eval-every`` steps (default 5: the target comes at steps 15-30 here, and a coarser grid rounds
each side's time up by as much as a whole grid interval), at most ``--p2-max-steps`` steps. It takes
about 1-2 min per run (6 runs), so it is off unless asked for; ``make bench`` runs it.

Smallest run (seconds, for a smoke test): ``--workloads W1 --warmup 1 --steps 2 --repeats 1``; ``--tiny``
also shrinks the model's warm start and the batch (the test suite uses it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "grpo_arithmetic_tiny.yaml"
SELF = str(Path(__file__).resolve())  # the workers run this file

#: rlvr overrides that define each workload (W2 = benchmarks/async_vs_sync.py's WORKLOAD, same warm start).
WORKLOADS = {
    "W1": {"overrides": []},
    "W2": {"overrides": [
        "task.name=arithmetic_chain",
        "task.options={min_digits: 1, max_digits: 2, ops: '+-', num_operands: 4}",
        "rollout.max_new_tokens=32", "rollout.prompts_per_step=16", "rollout.group_size=8",
        "trainer.warmup_steps=0", "sft.steps=400", "sft.target_accuracy=null"]},
    # W3: realistic shapes. A Qwen3-shaped model (18.9M parameters, 12.6M of them the tied 32k x 384 LM
    # head) with a 32k-token byte-level BPE vocabulary, built in code (rlvr.models.stand_in, W3_ARCH) at
    # random weights, and 160-token completions: the model never stops early, so every completion runs
    # to max_new_tokens on both sides. A random model scores 0 on the chain's verifier, and groups of
    # all-zero reward would let rlvr skip the whole training pass; the reward is therefore dense
    # (``w3_chain``: the fraction of the completion's characters in the chain alphabet), so every group
    # has some spread and both sides train every row.
    "W3": {"model": "w3", "warmup": 1, "steps": 3, "overrides": [
        "task.name=w3_chain",
        "task.options={min_digits: 1, max_digits: 2, ops: '+-*', num_operands: 6}",
        "rollout.max_new_tokens=160", "rollout.prompts_per_step=8", "rollout.group_size=4",
        "trainer.warmup_steps=0"]},
}
#: W3's model: rlvr.models.stand_in's qwen3_instruct at 32k tokens, hidden 384, 4 layers, GQA 6/2 heads.
W3_ARCH = dict(vocab_size=32768, hidden_size=384, intermediate_size=1024, num_hidden_layers=4,
               num_attention_heads=6, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048)
#: --tiny: a seconds-long warm start and a small batch (for the test suite; the numbers mean nothing).
TINY = ["task.options={min_digits: 1, max_digits: 2, ops: '+-', num_train: 2000, num_eval: 50}",
        "rollout.prompts_per_step=8", "rollout.group_size=4", "rollout.max_new_tokens=4",
        "sft.steps=10", "sft.batch_size=16", "sft.warmup_steps=2", "sft.target_accuracy=null",
        "eval.num_problems=8"]
#: Overrides of every rlvr run: no logging, plots, samples or mid-run checkpoints inside the timed steps.
QUIET = ["logging.progress=false", "logging.plots=false", "logging.num_samples=0",
         "logging.checkpoint_every=1000000", "eval.every=0", "eval.samples_per_problem=1"]


def _register_w3_task() -> None:
    """``w3_chain``: ``arithmetic_chain`` prompts with a dense reward, for W3 (see WORKLOADS)."""
    from rlvr.tasks.arithmetic_chain import ArithmeticChainTask
    from rlvr.tasks.base import TASKS, register_task

    if "w3_chain" in TASKS:
        return

    @register_task("w3_chain")
    class DenseChainTask(ArithmeticChainTask):
        """``reward`` = the fraction of the completion's characters that are digits or ``+-*=;`` (dense: a
        random model's samples differ in it); ``correct``/``format``/``chain`` as ``arithmetic_chain``."""

        def _score(self, problem, completion):
            out = super()._score(problem, completion)
            alphabet = set("0123456789+-*=;")
            out["reward"] = sum(c in alphabet for c in completion) / max(len(completion), 1)
            return out


def build_model(kind: str, folder: Path) -> str:
    """The workload's model as an HF folder under ``folder`` (built once; ``w3``: :data:`W3_ARCH`)."""
    from transformers.utils import logging as hf_logging

    from rlvr.models.stand_in import save_stand_in

    hf_logging.disable_progress_bar()

    path = folder / kind
    if not (path / "config.json").exists():
        save_stand_in("qwen3_instruct", path, **W3_ARCH)
    return str(path)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (``getrusage``; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    """This process's resident memory now (``/proc/self/statm``; NaN where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------------------------------- helpers (no TRL)
def summarize(values: list[float]) -> dict:
    """Median, min, max and count of ``values`` (all NaN when empty)."""
    if not values:
        nan = float("nan")
        return {"median": nan, "min": nan, "max": nan, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def linear_params(model) -> int:
    """Parameters of the model's ``nn.Linear`` layers (the matmuls; a tied output head counts once)."""
    import torch

    seen, n = set(), 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n += m.weight.numel()
    return n


def step_flops(n_params: int, shape: dict) -> dict:
    """Model FLOPs of one step: generation ``2 N B (P + C - 1)``, training ``(2 + 6) N B (P + C)``.

    ``shape``: ``B`` rows, ``P`` padded prompt width, ``C`` completion width (decode steps)."""
    B, P, C = shape["B"], shape["P"], shape["C"]
    gen_tokens = B * (P + max(C - 1, 0))
    train_tokens = B * (P + C)
    return {"gen_tokens": gen_tokens, "train_tokens": train_tokens,
            "gen": 2.0 * n_params * gen_tokens, "train": (2.0 + 6.0) * n_params * train_tokens}


def token_flops(n_params: int, tokens: dict) -> dict:
    """Model FLOPs from the tokens a hook on the input embedding counted: ``gen`` (sampling forwards),
    ``nograd`` (other forwards without gradient: old log-probs) at 2 N each, ``grad`` (forwards that are
    backpropagated) at 6 N."""
    return {"gen": 2.0 * n_params * tokens["gen"],
            "train": 2.0 * n_params * tokens["nograd"] + 6.0 * n_params * tokens["grad"]}


def step_model_flops(n_params: int, step: dict) -> dict:
    """:func:`token_flops` of the counted tokens; :func:`step_flops` of the batch shape where the count
    saw no generation (an engine that samples from its own copy of the weights)."""
    counted = step.get("tokens")
    estimate = step_flops(n_params, step)
    if not counted:
        return {"gen": estimate["gen"], "train": estimate["train"], "counted": False}
    out = token_flops(n_params, counted)
    if counted["gen"] == 0:
        out["gen"] = estimate["gen"]
    return {**out, "counted": counted["gen"] > 0}


def matmul_peak(n: int = 2048, dtype: str = "float32", repeats: int = 5, budget_s: float = 1.0) -> float:
    """FLOP/s of the best of ``repeats`` ``n x n @ n x n`` GEMMs in ``dtype`` (after one warm-up).

    ``n`` shrinks (by halves, to 256 at least) until one GEMM takes at most ``budget_s``: a CPU without
    native bf16 (AVX2 only) runs bf16 GEMMs hundreds of times slower than fp32, and 2048^3 would take minutes."""
    import torch

    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    probe_a, probe_b = torch.randn(256, 256, generator=g).to(dt), torch.randn(256, 256, generator=g).to(dt)
    torch.mm(probe_a, probe_b)
    t = time.perf_counter()
    torch.mm(probe_a, probe_b)
    rate = 2.0 * 256**3 / max(time.perf_counter() - t, 1e-9)
    while n > 256 and 2.0 * n**3 / rate > budget_s:
        n //= 2
    a = torch.randn(n, n, generator=g).to(dt)
    b = torch.randn(n, n, generator=g).to(dt)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def run_order(repeats: int) -> list[str]:
    """TRL and rlvr alternating, counterbalanced: trl, rlvr, rlvr, trl, trl, rlvr, ..."""
    order = []
    for r in range(repeats):
        order += ["trl", "rlvr"] if r % 2 == 0 else ["rlvr", "trl"]
    return order


def aggregate(runs: list[dict], n_params: int | None = None) -> dict:
    """Timed steps of all runs of one (workload, side), pooled: s/step, the split, FLOP rates."""
    steps = [s for r in runs for s in r["steps"][r["warmup"]:]]
    out = {"runs": len(runs), "steps": len(steps), "label": runs[0].get("label", "") if runs else ""}
    for key in ("peak_rss_mib", "rss_loaded_mib"):
        if runs and all(r.get(key) for r in runs):
            out[key] = statistics.median(r[key] for r in runs)
    for key in ("wall", "gen", "score"):
        out[key] = summarize([s[key] for s in steps])
    out["train"] = summarize([s["wall"] - s["gen"] - s["score"] for s in steps])
    n_params = n_params or (runs[0]["linear_params"] if runs else 0)
    if steps and n_params:
        fl = [step_model_flops(n_params, s) for s in steps]
        out["flops_counted"] = all(f["counted"] for f in fl)
        if all("tokens" in s for s in steps):
            out["tokens_per_step"] = {k: statistics.mean(s["tokens"][k] for s in steps)
                                      for k in ("gen", "nograd", "grad")}
        t_gen = sum(s["gen"] for s in steps)
        t_train = sum(s["wall"] - s["gen"] - s["score"] for s in steps)
        out["gen_flops_per_s"] = sum(f["gen"] for f in fl) / t_gen if t_gen > 0 else float("nan")
        out["train_flops_per_s"] = sum(f["train"] for f in fl) / t_train if t_train > 0 else float("nan")
        out["completion_tokens_mean"] = statistics.mean(s["gen_tokens"] / s["B"] for s in steps)
        out["rows"] = steps[0]["B"]
    return out


def _fmt_s(d: dict) -> str:
    return f"{d['median']:.3f} [{d['min']:.3f}, {d['max']:.3f}]"


def format_speed_table(results: dict) -> str:
    """``results[workload][side]`` = :func:`aggregate` output; one block per workload, TRL/rlvr ratio."""
    head = (f"{'workload':<26}{'side':<6}{'s/step median [min, max]':>26}{'generate':>16}{'score':>15}"
            f"{'train':>16}{'compl. tok':>12}")
    lines = [head, "-" * len(head)]
    for wl, sides in results.items():
        label = f"{wl} {next(iter(sides.values())).get('label', '')}"
        for side in ("trl", "rlvr"):
            if side not in sides:
                continue
            a = sides[side]
            wall = a["wall"]["median"]
            parts = []
            for key in ("gen", "score", "train"):
                v = a[key]["median"]
                parts.append(f"{v:.3f} ({100 * v / wall:3.0f}%)" if wall > 0 else f"{v:.3f}")
            name = "TRL" if side == "trl" else "rlvr"
            lines.append(f"{label if side == next(iter(sides)) else '':<26}{name:<6}{_fmt_s(a['wall']):>26}"
                         f"{parts[0]:>16}{parts[1]:>15}{parts[2]:>16}{a.get('completion_tokens_mean', 0):>12.1f}")
        if "trl" in sides and "rlvr" in sides:
            t, r = sides["trl"], sides["rlvr"]
            ratio = lambda k: t[k]["median"] / r[k]["median"] if r[k]["median"] > 0 else float("nan")  # noqa: E731
            lines.append(f"{'':<26}{'TRL/rlvr':<10}{ratio('wall'):>21.2f}x{ratio('gen'):>15.2f}x"
                         f"{ratio('score'):>14.2f}x{ratio('train'):>15.2f}x")
    return "\n".join(lines)


def format_flops_table(results: dict, peaks: dict, n_params: dict) -> str:
    """Achieved generation / training GFLOP/s per workload and side, as % of the measured GEMM peaks."""
    f32, b16 = peaks["float32"], peaks["bfloat16"]
    lines = [f"matmul peak (GEMMs up to {peaks['n']}^3, smaller where one would take over 1 s; {peaks['threads']} threads): fp32 {f32 / 1e9:.1f} GFLOP/s, "
             f"bf16 {b16 / 1e9:.1f} GFLOP/s",
             f"{'workload':<26}{'side':<6}{'N (linear)':>11}{'gen GFLOP/s':>13}{'% fp32':>8}{'% bf16':>8}"
             f"{'train GFLOP/s':>15}{'% fp32':>8}{'% bf16':>8}   tokens/step: gen, no-grad fwd, fwd+bwd"]
    for wl, sides in results.items():
        for side, a in sides.items():
            if "gen_flops_per_s" not in a:
                continue
            g, t = a["gen_flops_per_s"], a["train_flops_per_s"]
            lines.append(f"{wl + ' ' + a.get('label', ''):<26}{'TRL' if side == 'trl' else 'rlvr':<6}"
                         f"{n_params.get(wl, 0) / 1e6:>10.2f}M{g / 1e9:>13.2f}{100 * g / f32:>7.1f}%"
                         f"{100 * g / b16:>7.1f}%"
                         f"{t / 1e9:>15.2f}{100 * t / f32:>7.1f}%{100 * t / b16:>7.1f}%   {_tokens(a)}")
    return "\n".join(lines)


def _tokens(a: dict) -> str:
    tok = a.get("tokens_per_step")
    if not tok:
        return "(estimated from the batch shape)"
    gen = f"{tok['gen']:.0f}" if a.get("flops_counted") else "(shape estimate)"
    return f"{gen}, {tok['nograd']:.0f}, {tok['grad']:.0f}"


def format_memory_table(results: dict) -> str:
    """Peak resident memory of each side's process (median over its runs), what it held once the model was
    loaded, and the growth past that (the training run's own memory: activations, logits, optimizer state,
    the sampler's cache), with the rlvr/TRL ratios."""
    head = f"{'workload':<26}{'side':<6}{'peak RSS MiB':>14}{'after load':>12}{'growth':>10}"
    lines = [head, "-" * len(head)]
    for wl, sides in results.items():
        label = f"{wl} {next(iter(sides.values())).get('label', '')}"
        for i, side in enumerate(("trl", "rlvr")):
            a = sides.get(side, {})
            if "peak_rss_mib" not in a:
                continue
            grow = a["peak_rss_mib"] - a.get("rss_loaded_mib", float("nan"))
            lines.append(f"{label if i == 0 else '':<26}{'TRL' if side == 'trl' else 'rlvr':<6}"
                         f"{a['peak_rss_mib']:>14.0f}{a.get('rss_loaded_mib', float('nan')):>12.0f}{grow:>10.0f}")
        t, r = sides.get("trl", {}), sides.get("rlvr", {})
        if "peak_rss_mib" in t and "peak_rss_mib" in r:
            growth = lambda a: a["peak_rss_mib"] - a.get("rss_loaded_mib", float("nan"))  # noqa: E731
            lines.append(f"{'':<26}{'rlvr/TRL':<10}{r['peak_rss_mib'] / t['peak_rss_mib']:>9.2f}x{'':>12}"
                         f"{growth(r) / growth(t) if growth(t) > 0 else float('nan'):>9.2f}x")
    return "\n".join(lines)


def format_notes(workloads: dict) -> str:
    """Same prompts on both sides, each side's optimizer, rlvr's old-log-prob path, completion lengths."""
    runs = [r for w in workloads.values() for r in w["runs"]]
    opt = {side: next((r.get("optimizer") for r in runs if r["side"] == side), None) or "?" for side in ("trl", "rlvr")}
    same = ", ".join(f"{w}: {'yes' if v['same_prompts'] else 'NO'}" for w, v in workloads.items())
    reused = [s.get("old_logp_reused") for r in runs if r["side"] == "rlvr" for s in r["steps"][r["warmup"]:]]
    reused = [x for x in reused if x is not None]
    lines = [f"same prompts at every step on both sides: {same}",
             f"optimizer: TRL {opt['trl']}; rlvr {opt['rlvr']}"]
    if reused:
        lines.append(f"rlvr old_logp: the sampler's log-probs reused on {100 * sum(reused) / len(reused):.0f}% of "
                     "timed steps (else recomputed by a forward)")
    for name, w in workloads.items():
        trained = [s.get("trained_rows_frac") for r in w["runs"] if r["side"] == "rlvr" for s in r["steps"][r["warmup"]:]]
        trained = [x for x in trained if x is not None]
        if trained:
            lines.append(f"rlvr {name}: {100 * statistics.mean(trained):.0f}% of rows trained (the others had zero "
                         "advantage: no gradient, no forward/backward; TRL trains every row)")
    return "\n".join(lines)


def p2_summary(runs: list[dict]) -> dict:
    """Per side: the seconds to target of each seed (None: not reached), their median, and the ratio."""
    out: dict = {}
    for side in ("trl", "rlvr"):
        mine = [r for r in runs if r["side"] == side]
        secs = [r["p2"]["seconds"] for r in mine]
        reached = [s for s in secs if s is not None]
        out[side] = {"seconds": secs, "steps": [r["p2"]["step"] for r in mine],
                     "start": [r["p2"]["start"] for r in mine], "target": [r["p2"]["target"] for r in mine],
                     "median": statistics.median(reached) if len(reached) == len(secs) and secs else None}
    t, r = out["trl"]["median"], out["rlvr"]["median"]
    out["ratio"] = t / r if t is not None and r else None
    return out


def format_p2_table(summary: dict, max_steps: int, every: int) -> str:
    lines = [f"P2: wall-clock to held-out greedy accuracy start + 10 points (W1, eval every {every} steps, "
             f"at most {max_steps}, eval time excluded)",
             f"{'side':<6}{'seed':>5}{'start':>8}{'target':>8}{'step':>7}{'seconds':>13}"]
    for side in ("trl", "rlvr"):
        s = summary[side]
        for i, secs in enumerate(s["seconds"]):
            step = s["steps"][i]
            lines.append(f"{'TRL' if side == 'trl' else 'rlvr':<6}{i:>5}{100 * s['start'][i]:>7.1f}%"
                         f"{100 * s['target'][i]:>7.1f}%{step if step is not None else '-':>7}"
                         f"{f'{secs:.1f}' if secs is not None else 'not reached':>13}")
    med = lambda v: f"{v:.1f} s" if v is not None else "n/a (a seed did not reach it)"  # noqa: E731
    ratio = f"{summary['ratio']:.2f}x" if summary["ratio"] is not None else "n/a"
    lines.append(f"median: TRL {med(summary['trl']['median'])}, rlvr {med(summary['rlvr']['median'])}; "
                 f"TRL/rlvr {ratio}")
    return "\n".join(lines)


def trl_version() -> str | None:
    try:
        from importlib.metadata import version

        import trl  # noqa: F401

        return version("trl")
    except Exception:  # noqa: BLE001 - not installed, or broken: either way not usable here
        return None


# ---------------------------------------------------------------------------------------- the two workers
class _TargetReached(Exception):
    """P2: the held-out target was reached; stops an rlvr run from inside its evaluation."""


class _Clock:
    """Wall-clock minus the time spent in evaluation; one record per step boundary."""

    def __init__(self):
        self.eval_total = 0.0
        self.start = None
        self.steps: list[dict] = []
        self.cur = {"gen": 0.0, "score": 0.0}
        self.shape: dict = {}
        self.prompt_sets: list[int] = []
        self.evals: list[dict] = []
        self.first_eval = None
        self.linear_params = 0
        self.tokens = _TokenCounter()
        self.optimizer = None
        self.rss_loaded = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.eval_total

    def boundary(self) -> None:
        t = self.now()
        prev = self.steps[-1]["clock"] if self.steps else self.start
        self.steps.append({"clock": t, "wall": t - prev, **self.cur, **self.shape, "tokens": self.tokens.take()})
        self.cur = {"gen": 0.0, "score": 0.0}
        self.shape = {}

    def timed_eval(self, fn, step: int):
        t = time.perf_counter()
        result = self.tokens.in_phase(fn, "eval")()
        took = time.perf_counter() - t
        if self.start is None:  # the evaluation before training: the clock starts when it ends
            self.eval_total += took
            self.start = self.now()
        else:
            elapsed = (t - self.eval_total) - self.start
            self.eval_total += took
            self.evals.append({"step": step, "seconds": elapsed, "greedy_accuracy": result["greedy_accuracy"]})
        return result


class _TokenCounter:
    """Counts the tokens every forward pass runs through the model: a forward hook on the input
    embedding (each forward embeds its input ids once, KV-cached decode steps one token per row), by
    phase: ``gen`` (inside generation), ``eval`` (not counted), else ``grad`` / ``nograd`` by whether
    autograd is recording. The same hook on both sides; it costs one Python call per forward."""

    def __init__(self):
        self.phase = None
        self.modules: set = set()
        self.counts = {"gen": 0, "nograd": 0, "grad": 0}

    def hook(self, module, args, output):
        if self.phase == "eval":
            return
        n = output.numel() // output.shape[-1]
        key = self.phase if self.phase == "gen" else ("grad" if _grad_enabled() else "nograd")
        self.counts[key] += n

    def attach(self, model) -> None:
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if emb is not None and id(emb) not in self.modules:
            self.modules.add(id(emb))
            emb.register_forward_hook(self.hook)

    def take(self) -> dict:
        out, self.counts = self.counts, {"gen": 0, "nograd": 0, "grad": 0}
        return out

    def in_phase(self, fn, phase: str):
        """``fn`` run in ``phase`` (an enclosing ``eval`` phase wins: evaluation's sampling is not counted)."""
        def wrapper(*a, **kw):
            prev = self.phase
            self.phase = prev if prev == "eval" else phase
            try:
                return fn(*a, **kw)
            finally:
                self.phase = prev
        return wrapper


def _grad_enabled() -> bool:
    import torch

    return torch.is_grad_enabled()


def _digest(prompts) -> str:
    """A stable fingerprint of a step's set of prompts (``hash`` differs between processes)."""
    return hashlib.sha1("\n".join(sorted(set(prompts))).encode()).hexdigest()[:16]


def _shape(prompt_ids, completion_ids, completion_mask) -> dict:
    return {"B": int(prompt_ids.shape[0]), "P": int(prompt_ids.shape[1]), "C": int(completion_ids.shape[1]),
            "gen_tokens": int(completion_mask.sum())}


def _p2_result(clock: _Clock, delta: float) -> dict:
    first = clock.first_eval
    target = first + delta
    hit = next((e for e in clock.evals if e["greedy_accuracy"] >= target - 1e-9), None)
    return {"start": first, "target": target, "step": hit["step"] if hit else None,
            "seconds": hit["seconds"] if hit else None, "evals": clock.evals}


def _optimizer_name(opt) -> str:
    d = getattr(opt, "defaults", {})
    impl = "fused" if d.get("fused") else "foreach" if d.get("foreach") else \
        "for-loop" if d.get("foreach") is False else "torch default"
    return f"{type(opt).__name__} {impl}"


def _label(config) -> str:
    return f"{config.task.name} {config.rollout.prompts_per_step}x{config.rollout.group_size}"


def _load(spec: dict):
    import torch

    from rlvr.config import load_config

    torch.set_num_threads(spec["threads"])
    _register_w3_task()
    return load_config(CONFIG, spec["overrides"])


def rlvr_worker(spec: dict) -> dict:
    """One rlvr run through ``rlvr.train.loop.train``, hooked only to read the clock and batch shapes."""
    import torch

    from rlvr.train import loop
    from rlvr.train.learner import Learner
    from rlvr.records.logger import RunLogger

    config = _load(spec)
    clock = _Clock()
    every = spec.get("p2_eval_every", 0)
    original_log, original_update, original_eval = RunLogger.log, Learner.update, loop.evaluate
    original_load, original_engine = loop.load_model_and_tokenizer, loop.make_engine

    def load_model(*args, **kwargs):
        model, tok = original_load(*args, **kwargs)
        clock.tokens.attach(model)  # before any engine copies the module (hooks travel with deepcopy)
        clock.rss_loaded = clock.rss_loaded or current_rss_mib()
        return model, tok

    def make_engine(*args, **kwargs):
        engine = original_engine(*args, **kwargs)
        if isinstance(getattr(engine, "model", None), torch.nn.Module):
            clock.tokens.attach(engine.model)
        engine.generate = clock.tokens.in_phase(engine.generate, "gen")
        return engine

    def log(self, record):
        original_log(self, record)
        if "reward_mean" in record:
            clock.cur.update(gen=record["time_generate"], score=record["time_score"],
                             learner=record.get("time_train", float("nan")), own_time_step=record["time_step"],
                             old_logp_reused=record.get("old_logp_reused"),
                             trained_rows_frac=record.get("trained_rows_frac"))
            clock.boundary()

    def update(self, exp, step):
        r = exp.rollout
        clock.shape = _shape(r.prompt_ids, r.completion_ids, r.completion_mask)
        clock.tokens.attach(self.model)
        clock.optimizer = clock.optimizer or _optimizer_name(self.optimizer)
        clock.prompt_sets.append(_digest(p.prompt for p in exp.problems))
        clock.linear_params = clock.linear_params or linear_params(self.model)
        return original_update(self, exp, step)

    def evaluate(*args, **kwargs):
        step = len(clock.steps)
        result = clock.timed_eval(lambda: original_eval(*args, **kwargs), step)
        if not clock.evals:
            clock.first_eval = result["greedy_accuracy"]
        elif every and result["greedy_accuracy"] >= clock.first_eval + spec["p2_delta"] - 1e-9:
            raise _TargetReached
        return result

    RunLogger.log, Learner.update, loop.evaluate = log, update, evaluate
    loop.load_model_and_tokenizer, loop.make_engine = load_model, make_engine
    try:
        loop.train(config, log=lambda *a, **k: None)
    except _TargetReached:
        pass
    finally:
        RunLogger.log, Learner.update, loop.evaluate = original_log, original_update, original_eval
        loop.load_model_and_tokenizer, loop.make_engine = original_load, original_engine
    out = {"side": "rlvr", "steps": clock.steps, "prompt_sets": clock.prompt_sets, "label": _label(config),
           "linear_params": clock.linear_params, "threads": torch.get_num_threads(), "optimizer": clock.optimizer,
           "rss_loaded_mib": clock.rss_loaded, "peak_rss_mib": peak_rss_mib()}
    if every:
        out["p2"] = _p2_result(clock, spec["p2_delta"])
    return out


def trl_worker(spec: dict) -> dict:
    """One TRL run: ``GRPOTrainer.train()`` on the same model, prompts, reward and hyper-parameters."""
    import warnings

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.eval.evaluate import evaluate
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.warmstart.sft import resolve_model_path
    from rlvr.rollout.hf import HFRolloutEngine
    from rlvr.tasks import defaults as task_defaults, make_task
    from rlvr.experience.batch import PromptSampler
    from rlvr.tasks.base import score

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    config = _load(spec)
    task = make_task(config.task.name, **config.task.options)
    path = resolve_model_path(config, task, False, lambda *a: None)
    model, tok = load_model_and_tokenizer(path, config.model.dtype, config.run.device)
    rss_loaded = current_rss_mib()
    task_defaults.apply_token_budget(config, task, tok, lambda *a: None)  # as rlvr's loop does
    r, t, alg = config.rollout, config.trainer, config.algorithm
    check = {"advantage_estimator": alg.advantage_estimator == "grpo",
             "policy_loss": alg.policy_loss in ("vanilla", "ppo"),
             "loss_agg_mode": alg.loss_agg_mode == "token-mean", "kl.placement": config.kl.placement == "none",
             "ppo_epochs": t.ppo_epochs == 1, "minibatches": r.prompts_per_step % t.num_minibatches == 0,
             "lr_schedule": t.lr_schedule == "constant"}
    if not all(check.values()):
        raise SystemExit(f"the TRL mapping does not cover this config: {[k for k, v in check.items() if not v]}")
    steps = spec["total_steps"]
    problems = PromptSampler(task.problems("train"), config.run.seed).next(steps * r.prompts_per_step)
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in problems], "pid": list(range(len(problems)))})

    def exact_match(prompts, completions, pid, **kwargs):  # rlvr's verifier, as rlvr's producer calls it
        return score(task, [problems[i] for i in pid], completions)["reward"].tolist()

    clip = alg.policy_loss_params
    args = GRPOConfig(
        output_dir=spec["tmp"], seed=config.run.seed, max_steps=steps * t.num_minibatches,
        per_device_train_batch_size=r.prompts_per_step * r.group_size // t.num_minibatches,
        gradient_accumulation_steps=1, steps_per_generation=t.num_minibatches, num_iterations=t.ppo_epochs,
        num_generations=r.group_size, max_completion_length=r.max_new_tokens, temperature=r.temperature,
        top_p=r.top_p, top_k=0, beta=0.0, loss_type="bnpo", scale_rewards="group",
        epsilon=clip.get("clip_ratio_low", 0.2), epsilon_high=clip.get("clip_ratio_high", 0.2),
        learning_rate=t.lr, lr_scheduler_type="constant_with_warmup" if t.warmup_steps else "constant",
        warmup_steps=t.warmup_steps, weight_decay=t.weight_decay, adam_beta1=t.betas[0], adam_beta2=t.betas[1],
        max_grad_norm=t.max_grad_norm, shuffle_dataset=False, gradient_checkpointing=False, bf16=False,
        fp16=False, use_cpu=True, report_to="none", logging_strategy="no", save_strategy="no",
        eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0, log_completions=False)
    clock = _Clock()
    every = spec.get("p2_eval_every", 0)
    k = t.num_minibatches
    eval_problems = task.problems("eval", config.eval.num_problems)

    def run_eval(model_):
        engine = HFRolloutEngine(model_, tok)
        return evaluate(engine, task, eval_problems, r.temperature, r.top_p, r.max_new_tokens,
                        config.eval.samples_per_problem, seed=config.run.seed + 1234)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if every:
                clock.first_eval = clock.timed_eval(lambda: run_eval(trainer.model), 0)["greedy_accuracy"]
            else:
                clock.start = clock.now()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % k == 0:
                clock.boundary()
                done = state.global_step // k
                if every and done % every == 0:
                    acc = clock.timed_eval(lambda: run_eval(trainer.model), done)["greedy_accuracy"]
                    if acc >= clock.first_eval + spec["p2_delta"] - 1e-9:
                        control.should_training_stop = True
            return control

    clock.tokens.attach(model)
    trainer = GRPOTrainer(model=model, reward_funcs=exact_match, args=args, train_dataset=dataset,
                          processing_class=tok, callbacks=[Clock()])
    torch.set_num_threads(spec["threads"])
    gen, calc, gen_score = trainer._generate, trainer._calculate_rewards, trainer._generate_and_score_completions

    def timed(fn, key):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                clock.cur[key] += time.perf_counter() - t0
        return wrapper

    def generate_and_score(inputs):
        out = gen_score(inputs)
        clock.shape = _shape(out["prompt_ids"], out["completion_ids"], out["completion_mask"])
        clock.prompt_sets.append(_digest(x["prompt"] for x in inputs))
        return out

    trainer._generate = timed(clock.tokens.in_phase(gen, "gen"), "gen")
    trainer._calculate_rewards = timed(calc, "score")
    trainer._generate_and_score_completions = generate_and_score
    trainer.train()
    out = {"side": "trl", "steps": clock.steps, "prompt_sets": clock.prompt_sets, "label": _label(config),
           "linear_params": linear_params(model), "threads": torch.get_num_threads(),
           "optimizer": _optimizer_name(getattr(trainer.optimizer, "optimizer", trainer.optimizer))
                        + f" (optim={getattr(args.optim, 'value', args.optim)})",
           "rss_loaded_mib": rss_loaded, "peak_rss_mib": peak_rss_mib()}
    if every:
        out["p2"] = _p2_result(clock, spec["p2_delta"])
    return out


def warm_worker(spec: dict) -> dict:
    """Build (or find) the cached warm start both sides load: ``rlvr sft``'s own code path."""
    from rlvr.warmstart.sft import resolve_model_path
    from rlvr.tasks import make_task

    config = _load(spec)
    task = make_task(config.task.name, **config.task.options)
    return {"path": resolve_model_path(config, task, False, lambda *a: None)}


# ---------------------------------------------------------------------------------------- the driver
def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONWARNINGS": "ignore"}


def run_worker(spec: dict, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec = {**spec, "tmp": tmp, "threads": threads,
                "overrides": spec["overrides"] + [f"run.output_dir={tmp}", f"run.name={spec['side']}"]}
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps({**spec, "out": str(out_path)}))
        proc = subprocess.run([sys.executable, SELF, "--worker", str(spec_path)], env=_env(threads), cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{spec['side']} run failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
        return {**json.loads(out_path.read_text()), "warmup": spec["warmup"], "seed": spec["seed"]}


_BUILT: set = set()


def warm_start(overrides: list[str], threads: int) -> float:
    """The workload's warm start (what ``rlvr sft`` builds; cached by rlvr), once per process here."""
    if tuple(overrides) in _BUILT:
        return 0.0
    _BUILT.add(tuple(overrides))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps({"side": "warm", "overrides": overrides, "threads": threads,
                                         "out": str(Path(tmp) / "out.json")}))
        proc = subprocess.run([sys.executable, SELF, "--worker", str(spec_path)], env=_env(threads), cwd=ROOT,
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"warm start failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return time.perf_counter() - t0


def versions() -> dict:
    from importlib.metadata import version

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
           "cpus": os.cpu_count()}
    for pkg in ("trl", "transformers", "accelerate", "datasets", "rlvr"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            out[pkg] = None
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa
        out["git"] = git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain") else "")
    except OSError:
        out["git"] = None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="W1,W2,W3")
    ap.add_argument("--warmup", type=int, default=None, help="steps per run not timed (>= 1; default: the "
                    "workload's, W1/W2 3, W3 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default: W1/W2 20, W3 3)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side and workload (alternating, ABBA)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first repeat (repeat r: seed + r)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--p2", action="store_true", help="also measure wall-clock to the held-out target (W1)")
    ap.add_argument("--p2-seeds", type=int, default=3)
    ap.add_argument("--p2-delta", type=float, default=0.10, help="target: start greedy accuracy + this")
    ap.add_argument("--p2-eval-every", type=int, default=5)
    ap.add_argument("--p2-max-steps", type=int, default=250)
    ap.add_argument("--gemm", type=int, default=2048, help="matrix size of the peak-FLOP GEMM")
    ap.add_argument("--tiny", action="store_true", help="tiny warm start and batch (tests; numbers mean nothing)")
    ap.add_argument("--if-available", action="store_true", help="print a line and exit 0 when TRL is missing")
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="an rlvr config override for every run (e.g. trainer.chunked_head=always; the TRL side "
                    "reads the same config for its hyper-parameters); repeatable")
    ap.add_argument("--sides", default="trl,rlvr", help="run only these sides (e.g. rlvr: no ratio is printed)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        out = {"trl": trl_worker, "rlvr": rlvr_worker, "warm": warm_worker}[spec["side"]](spec)
        Path(spec["out"]).write_text(json.dumps(out))
        return 0
    if trl_version() is None:
        msg = "vs_trl: TRL is not installed; pip install -e '.[bench]' (trl, accelerate, datasets)"
        print(msg + ("; skipped" if args.if_available else ""))
        return 0 if args.if_available else 2
    if (args.warmup is not None and args.warmup < 1) or (args.steps is not None and args.steps < 1):
        raise SystemExit("--warmup and --steps must be >= 1")
    import torch

    torch.set_num_threads(args.threads)
    info = versions()
    print(f"TRL {info['trl']} (transformers {info['transformers']}, accelerate {info['accelerate']}) vs rlvr "
          f"{info['rlvr']} @ {info['git']}; torch {info['torch']}, {args.threads} threads, fp32; "
          f"{args.warmup or 'the workload default'} warm-up + {args.steps or 'the workload default'} timed steps x "
          f"{args.repeats} runs per side, alternating")
    peaks = {"n": args.gemm, "threads": args.threads, "float32": matmul_peak(args.gemm, "float32"),
             "bfloat16": matmul_peak(args.gemm, "bfloat16")}  # measured again at the end: the best of both
    report: dict = {"versions": info, "args": vars(args), "peaks": peaks, "workloads": {}}
    results, n_params = {}, {}
    base = QUIET + (TINY if args.tiny else ["eval.num_problems=16"])  # rlvr's before/after eval: untimed
    if args.tiny:  # W3's model at a 32k vocabulary but a 2-layer, 64-wide body
        W3_ARCH.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, head_dim=16)
    models = tempfile.TemporaryDirectory(prefix="rlvr-vs-trl-")  # W3's model, built once, removed at exit
    for wl in args.workloads.split(","):
        overrides = WORKLOADS[wl]["overrides"] + base + args.override
        if WORKLOADS[wl].get("model"):
            t0 = time.perf_counter()
            overrides.append(f"model.path={build_model(WORKLOADS[wl]['model'], Path(models.name))}")
            print(f"{wl}: model built ({time.perf_counter() - t0:.0f} s)", flush=True)
        built = warm_start(overrides, args.threads)
        print(f"{wl}: warm start ready ({built:.0f} s)", flush=True)
        runs = []
        warmup = args.warmup or WORKLOADS[wl].get("warmup", 3)
        steps = args.steps or WORKLOADS[wl].get("steps", 20)
        for i, side in enumerate(run_order(args.repeats)):
            if side not in args.sides.split(","):
                continue
            seed = args.seed + i // 2
            spec = {"side": side, "seed": seed, "warmup": warmup, "total_steps": warmup + steps,
                    "overrides": overrides + [f"run.seed={seed}", f"trainer.steps={warmup + steps}"]}
            t0 = time.perf_counter()
            run = run_worker(spec, args.threads)
            timed = [s["wall"] for s in run["steps"][warmup:]]
            print(f"  {side:<4} seed {seed}: median {statistics.median(timed):.3f} s/step "
                  f"({time.perf_counter() - t0:.0f} s in all)", flush=True)
            runs.append(run)
        by_seed = {}
        for run in runs:
            by_seed.setdefault(run["seed"], {})[run["side"]] = run["prompt_sets"][:warmup + steps]
        same = all(s.get("trl") == s.get("rlvr") for s in by_seed.values())
        results[wl] = {side: aggregate([r for r in runs if r["side"] == side]) for side in ("trl", "rlvr")
                       if any(r["side"] == side for r in runs)}
        n_params[wl] = runs[0]["linear_params"]
        report["workloads"][wl] = {"overrides": overrides, "same_prompts": same, "runs": runs,
                                   "summary": results[wl]}
        if not same:
            print(f"  warning: {wl}: the two sides did not see the same prompts at every step")
    for dtype in ("float32", "bfloat16"):
        peaks[f"{dtype}_start"] = peaks[dtype]
        peaks[f"{dtype}_end"] = matmul_peak(args.gemm, dtype)
        peaks[dtype] = max(peaks[dtype], peaks[f"{dtype}_end"])
    print()
    print(format_speed_table(results))
    print()
    print(format_flops_table(results, peaks, n_params))
    print()
    print(format_memory_table(results))
    print()
    print(format_notes(report["workloads"]))
    if args.p2:
        overrides = WORKLOADS["W1"]["overrides"] + base
        warm_start(overrides, args.threads)  # cached: the W1 warm start of the speed runs
        p2_runs = []
        for seed in range(args.seed, args.seed + args.p2_seeds):
            for side in ("trl", "rlvr") if seed % 2 == 0 else ("rlvr", "trl"):
                spec = {"side": side, "seed": seed, "warmup": 0, "total_steps": args.p2_max_steps,
                        "p2_eval_every": args.p2_eval_every, "p2_delta": args.p2_delta,
                        "overrides": overrides + [f"run.seed={seed}", f"trainer.steps={args.p2_max_steps}",
                                                  f"eval.every={args.p2_eval_every}"]}
                spec["overrides"].append("eval.num_problems=8" if args.tiny else "eval.num_problems=200")
                t0 = time.perf_counter()
                run = run_worker(spec, args.threads)
                secs, step = run["p2"]["seconds"], run["p2"]["step"]
                got = "not reached" if secs is None else f"{secs:.1f} s at step {step}"
                print(f"  P2 {side:<4} seed {seed}: {got} ({time.perf_counter() - t0:.0f} s in all)", flush=True)
                p2_runs.append(run)
        summary = p2_summary(p2_runs)
        report["p2"] = {"runs": p2_runs, "summary": summary}
        print()
        print(format_p2_table(summary, args.p2_max_steps, args.p2_eval_every))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
