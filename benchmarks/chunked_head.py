"""The chunked LM head against the plain one: peak memory and time of the log-probs' forward + backward.

    python benchmarks/chunked_head.py [--positions 2048] [--hidden 512] [--vocab 32000,151936]

For each vocabulary, each arm runs in its own fresh process (peak resident memory is per process):
``plain`` computes the ``[N, V]`` logits ``hidden @ W^T`` and then :func:`rlvr.models.logprobs.logprob_stats`
(the learner's path before, itself chunked over the log-softmax); ``chunked`` is
:func:`rlvr.models.lm_head.head_logprob_stats`. Both backpropagate ``sum(logp) + 0.01 sum(entropy)`` into the
hidden states and the head's weight. Printed: seconds (best of 3) and the peak resident memory above the
process's baseline after building the inputs, with the ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def arm(kind: str, n: int, d: int, v: int) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from rlvr.models.lm_head import head_logprob_stats
    from rlvr.models.logprobs import logprob_stats

    torch.manual_seed(0)
    hidden = torch.randn(n, d, requires_grad=True)
    weight = (torch.randn(v, d) * 0.02).requires_grad_(True)
    tokens = torch.randint(0, v, (n,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        if kind == "plain":
            logits = (hidden @ weight.t()).unsqueeze(0)
            logp, ent, _ = logprob_stats(logits, tokens.unsqueeze(0))
        else:
            logp, ent, _ = head_logprob_stats(hidden, weight, tokens)
        (logp.sum() + 0.01 * ent.sum()).backward()
        hidden.grad = weight.grad = None

    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": min(times), "peak_mib": (peak - base) / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=2048, help="N = rows x completion tokens")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", default="32000,151936")
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.arm:
        print(json.dumps(arm(args.arm, args.positions, args.hidden, int(args.vocab))))
        return 0
    print(f"LM head log-probs, forward + backward, N = {args.positions} positions, D = {args.hidden} "
          "(each arm a fresh process; peak RSS above the inputs):")
    for v in (int(x) for x in args.vocab.split(",")):
        res = {}
        for kind in ("plain", "chunked"):
            out = subprocess.run([sys.executable, __file__, "--arm", kind, "--positions", str(args.positions),
                                  "--hidden", str(args.hidden), "--vocab", str(v)],
                                 capture_output=True, text=True, check=True)
            res[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        p, c = res["plain"], res["chunked"]
        print(f"  V = {v:>6}: plain {p['seconds']:.3f} s, {p['peak_mib']:.0f} MiB | chunked {c['seconds']:.3f} s, "
              f"{c['peak_mib']:.0f} MiB | memory {c['peak_mib'] / max(p['peak_mib'], 1e-9):.2f}x, "
              f"time {c['seconds'] / p['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
