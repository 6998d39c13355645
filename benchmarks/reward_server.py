"""Remote reward overhead: samples/s of the arithmetic verifier served by the reference reward server
(rlvr.rewards.remote, on the loopback, the server in its own process) with 1 and 4 requests in flight,
beside the baseline of the same verifier called in-process.

    python benchmarks/reward_server.py [--samples 2000] [--batch-size 32] [--repeats 3] [--quick]

The verifier is wrapped exactly as ``rlvr serve-reward --task arithmetic`` wraps it (rlvr.cli.serve_reward's
TaskScorer), on both sides; half of the completions are right, half wrong, and the remote values must
equal the in-process ones. The arithmetic verifier costs microseconds a sample, so this measures the
protocol's own cost (JSON both ways, HTTP on kept-alive connections, the server's thread hand-off): a
verifier, reward model or judge that costs milliseconds a sample hides it. On a machine with few cores,
client and server share them, so 4 requests in flight need not beat 1. Each number is the best of ``--repeats`` timed calls
after a warm-up. Numbers depend on the machine; the ratios are the result.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import threading
import time


def _serve(port: int) -> int:
    """The server process: the arithmetic verifier behind RewardServer, its URL on the first stdout line."""
    from rlvr.cli.serve_reward import TaskScorer
    from rlvr.rewards.remote import RewardServer
    from rlvr.tasks import make_task

    server = RewardServer([TaskScorer(make_task("arithmetic"))], port=port)
    print(server.url, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _start_server() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(120)
    if not line or not line[0].startswith("http://"):
        proc.kill()
        raise SystemExit(f"the reward server did not start (exit status {proc.poll()})")
    return proc, line[0].strip()


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32, help="samples per request")
    ap.add_argument("--concurrency", default="1,4", help="requests in flight, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="400 samples, one timed call each")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return _serve(0)
    if args.quick:
        args.samples, args.repeats = min(args.samples, 400), 1

    from rlvr.cli.serve_reward import TaskScorer
    from rlvr.rewards.remote import RemoteReward
    from rlvr.tasks import make_task

    task = make_task("arithmetic")
    problems = task.problems("train", args.samples)
    texts = [task.format_sft_target(p) if i % 2 == 0 else "x" for i, p in enumerate(problems)]
    n = len(texts)
    local = TaskScorer(task)
    expected = local(problems, texts)
    t_local = _best(lambda: local(problems, texts), args.repeats)
    requests = math.ceil(n / args.batch_size)
    print(f"reward server: the arithmetic verifier, {n} samples, batch_size {args.batch_size} ({requests} requests "
          f"a call), loopback, the server in its own process; best of {args.repeats}")
    print(f"  in-process verifier        {n / t_local:>10,.0f} samples/s  ({1e3 * t_local:7.1f} ms a call)")
    proc, url = _start_server()
    try:
        for c in (int(k) for k in args.concurrency.split(",")):
            remote = RemoteReward(url, batch_size=args.batch_size, max_concurrency=c, retries=0)
            got = remote(problems, texts)
            if got != expected or remote.failed_chunks:
                raise SystemExit(f"the remote values differ from the in-process ones (failed requests: "
                                 f"{remote.failed_chunks})")
            t = _best(lambda remote=remote: remote(problems, texts), args.repeats)
            print(f"  remote, {c} in flight{' ' * (6 - len(str(c)))}     {n / t:>10,.0f} samples/s  ({1e3 * t:7.1f} ms a call;"
                  f" {t / t_local:.1f}x the in-process time, {1e3 * (t - t_local) / requests:.2f} ms overhead a "
                  f"request)")
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
