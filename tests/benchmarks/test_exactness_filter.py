"""benchmarks/exactness.py leaves out only wall-clock metrics: a computed value is always compared."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import exactness as E  # noqa: E402


def test_only_timings_are_left_out():
    timing = ["time_train", "time_generate", "learner_wait_s", "rollout_idle_s", "weight_load_s", "sync/seconds",
              "tokens_per_second", "learner_idle_frac"]
    computed = ["reward_std", "kl_seq_mean", "skipped_steps", "eval/greedy_short", "staleness_max", "samples_dropped",
                "loss", "grad_norm", "sync/bytes", "entropy_token_mean"]
    assert all(E._is_timing(k) for k in timing)
    assert not any(E._is_timing(k) for k in computed)
