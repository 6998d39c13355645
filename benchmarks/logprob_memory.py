"""Peak memory of the learner's log-prob + entropy computation at a ~150k vocabulary (issue 14.6).

    .venv/bin/python benchmarks/logprob_memory.py [--rows 8 --prompt 10 --completion 16 --vocab 151936]

The model is the built-in tiny architecture (rlvr.models.tiny.TINY_ARCH) with a Qwen-sized
vocabulary (151,936 tokens, tied embeddings). For each path it runs one training forward (sampled-token
log-probs and entropy, a loss of both) and its backward, and reports the peak of torch's CPU
allocations above the starting point, from the torch profiler's memory events (allocations minus
frees in time order), plus the process's peak RSS growth (each path in its own subprocess):

* plain:   completion_logits (head over all P + T positions, fp32 copy divided by T) + token_logprobs
           (log_softmax) + entropy_from_logits (log_softmax, softmax, product), autograd keeps them;
* chunked: completion_outputs (head only at the T completion positions) + logprob_stats (one pass in
           chunks of positions, backward recomputes the softmax chunk by chunk).

It also checks that both give the same log-probs / entropy and prints one [B, T, V] fp32 tensor's
size for scale. Each path is measured twice: training the tied embedding / head (its two [V, H]
weight gradients, the same for both paths, then dominate the peak RSS) and with it frozen (what is
left is the log-prob path's own memory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch


def build(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlvr.models.tiny import TINY_ARCH

    config = LlamaConfig(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
                         **TINY_ARCH)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def inputs(rows, prompt, completion, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    p_ids = torch.randint(4, vocab, (rows, prompt), generator=g)
    p_mask = torch.ones(rows, prompt, dtype=torch.long)
    p_mask[: rows // 2, : prompt // 3] = 0  # some left padding
    c_ids = torch.randint(4, vocab, (rows, completion), generator=g)
    c_mask = torch.ones(rows, completion, dtype=torch.long)
    c_mask[rows // 2:, completion // 2:] = 0  # some right padding
    return p_ids, p_mask, c_ids, c_mask


def run_path(path, model, batch, temperature=0.9):
    from rlvr.algorithms import entropy_from_logits
    from rlvr.models.logprobs import completion_logits, completion_outputs, logprob_stats, token_logprobs

    p_ids, p_mask, c_ids, c_mask = batch
    m = c_mask.float()
    if path == "plain":
        logits = completion_logits(model, p_ids, p_mask, c_ids, c_mask, temperature=temperature)
        logp, ent = token_logprobs(logits, c_ids), entropy_from_logits(logits)
    else:
        out = completion_outputs(model, p_ids, p_mask, c_ids, c_mask)
        logp, ent, _ = logprob_stats(out, c_ids, temperature)
    ((logp + 0.01 * ent) * m).sum().backward()
    return logp.detach(), ent.detach()


def profiled_peak(fn) -> tuple[int, object]:
    """Peak bytes of torch CPU allocations above the start: the profiler's allocations (each op's own,
    ``self_cpu_memory_usage``) and frees (``[memory]`` events, negative) summed in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak, result


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_peak_growth(fn) -> int:
    """Peak resident-set growth (KiB) while ``fn`` runs: the kernel's high-water mark is reset first
    (``/proc/self/clear_refs``, Linux), 0 where that is not available."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return 0
    base = _status_kib("VmRSS")
    fn()
    return _status_kib("VmHWM") - base


def child(path, a):
    torch.set_num_threads(a.threads)
    model = build(a.vocab)
    if a.freeze_head:  # no [V, H] weight gradients: what is left is the log-prob path's own memory
        model.get_input_embeddings().weight.requires_grad_(False)
    batch = inputs(a.rows, a.prompt, a.completion, a.vocab)
    run_path(path, model, batch)  # warm-up (lazy allocations, thread pools)
    model.zero_grad(set_to_none=True)
    rss = rss_peak_growth(lambda: run_path(path, model, batch))
    model.zero_grad(set_to_none=True)
    peak, _ = profiled_peak(lambda: run_path(path, model, batch))
    print(json.dumps({"path": path, "torch_peak_bytes": peak, "rss_growth_kib": rss}))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=10)
    ap.add_argument("--completion", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", default=None)
    ap.add_argument("--freeze-head", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.child:
        return child(a.child, a)
    torch.set_num_threads(a.threads)
    model = build(a.vocab)
    batch = inputs(a.rows, a.prompt, a.completion, a.vocab)
    ref, got = run_path("plain", model, batch), run_path("chunked", model, batch)
    m = batch[3].bool()
    diff = max(float((x - y)[m].abs().max()) for x, y in zip(ref, got))
    btv = a.rows * a.completion * a.vocab * 4
    print(f"vocab {a.vocab}, rows {a.rows}, prompt {a.prompt}, completion {a.completion}; one [B, T, V] fp32 "
          f"tensor = {btv / 2**20:.1f} MiB; max |plain - chunked| over log-probs and entropy = {diff:.2e}")
    results = {"diff": diff, "btv_bytes": btv}
    args = [f"--rows={a.rows}", f"--prompt={a.prompt}", f"--completion={a.completion}", f"--vocab={a.vocab}",
            f"--threads={a.threads}"]
    for frozen in (False, True):
        print("  tied embedding / head " + ("frozen (no [V, H] weight gradients)" if frozen else "trained"))
        for path in ("plain", "chunked"):
            cmd = [sys.executable, __file__, f"--child={path}", *args] + (["--freeze-head"] if frozen else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            results[f"{path}{'_frozen_head' if frozen else ''}"] = r
            print(f"    {path:8s} peak torch allocations {r['torch_peak_bytes'] / 2**20:8.1f} MiB "
                  f"({r['torch_peak_bytes'] / btv:.2f} x [B,T,V]); peak RSS growth {r['rss_growth_kib'] / 1024:8.1f} MiB")
        key = "_frozen_head" if frozen else ""
        print(f"    chunked / plain peak torch allocations: "
              f"{results['chunked' + key]['torch_peak_bytes'] / results['plain' + key]['torch_peak_bytes']:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
