"""Micro-timing of the learner's forward: plain vs shared-prefix (issue 14.2), on the built-in tiny
architecture with the default workload's shapes and a long-completion one.

    .venv/bin/python benchmarks/shared_prefix.py [--repeats 7] [--json OUT]

Per workload it times, alternating the two paths, (a) the training forward + backward of one
minibatch (a sum of masked log-probs) and (b) the no-grad forward of the whole batch (old/ref
log-probs), and prints median seconds, min/max and the ratio plain/shared. Prompts are left-padded
arithmetic-like strings, completions ragged and right-padded, G rows per prompt, as the rollout
engine lays them out. Random weights: timing does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rlvr.models.logprobs import completion_outputs, logprob_stats
from rlvr.models.tiny import build_char_tokenizer, build_tiny_model

#: name -> (prompts, G, minibatch rows, prompt chars (min, max), completion tokens (min, max))
WORKLOADS = {
    "W1 default (32x8, prompt ~10, completion ~3)": (32, 8, 64, (5, 9), (2, 5)),
    "W2 long completions (16x8, prompt ~20, completion ~26)": (16, 8, 32, (15, 22), (18, 32)),
}


def batch(tok, prompts, G, pchars, clen, seed=0):
    g = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(prompts):
        n = int(torch.randint(pchars[0], pchars[1] + 1, (1,), generator=g))
        texts.append("".join(str(int(d)) for d in torch.randint(0, 10, (n - 1,), generator=g)) + "=")
    enc = tok([t for t in texts for _ in range(G)], return_tensors="pt", padding=True, padding_side="left")
    B = enc["input_ids"].shape[0]
    lengths = torch.randint(clen[0], clen[1] + 1, (B,), generator=g)
    T = int(lengths.max())
    c_ids = torch.randint(4, len(tok), (B, T), generator=g)
    c_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return enc["input_ids"], enc["attention_mask"], c_ids.masked_fill(c_mask == 0, tok.pad_token_id), c_mask


def train_step(model, args, shared):
    p, pm, c, cm = args
    out = completion_outputs(model, p, pm, c, cm, shared_prefix=shared)
    logp = logprob_stats(out, c)[0]
    (logp * cm).sum().backward()
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def no_grad_forward(model, args, shared):
    p, pm, c, cm = args
    logprob_stats(completion_outputs(model, p, pm, c, cm, shared_prefix=shared), c)


def once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0)
    results = {}
    print(f"torch {torch.__version__}, {a.threads} thread(s), {a.repeats} repeats, median [min, max] seconds")
    for name, (n_prompts, G, mb_rows, pchars, clen) in WORKLOADS.items():
        full = batch(tok, n_prompts, G, pchars, clen)
        mb = tuple(x[:mb_rows] for x in full)
        res = {}
        for label, fn, args in (("train fwd+bwd (minibatch)", train_step, mb),
                                ("no-grad forward (batch)", no_grad_forward, full)):
            times = {False: [], True: []}
            for shared in (False, True):  # warm-up
                fn(model, args, shared)
            for _ in range(a.repeats):  # alternate so that machine load hits both alike
                for shared in (False, True):
                    times[shared].append(once(lambda: fn(model, args, shared)))
            med = {k: statistics.median(v) for k, v in times.items()}
            res[label] = {"plain": med[False], "shared": med[True], "ratio": med[False] / med[True],
                          "plain_range": [min(times[False]), max(times[False])],
                          "shared_range": [min(times[True]), max(times[True])]}
        results[name] = {"shape": {"rows": full[0].shape[0], "P": full[0].shape[1], "T": full[2].shape[1],
                                   "minibatch_rows": mb_rows}, **res}
        print(f"\n{name}: rows {full[0].shape[0]}, P {full[0].shape[1]}, T {full[2].shape[1]}")
        for label, r in res.items():
            print(f"  {label:28s} plain {r['plain']:.4f} [{r['plain_range'][0]:.4f}, {r['plain_range'][1]:.4f}]"
                  f"  shared {r['shared']:.4f} [{r['shared_range'][0]:.4f}, {r['shared_range'][1]:.4f}]"
                  f"  plain/shared {r['ratio']:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
