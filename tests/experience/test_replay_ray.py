"""TBA on the Ray backend: two searcher actors feeding one learner's replay buffer."""

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray backend needs the 'ray' extra (installed by the dev extra)")

pytestmark = pytest.mark.slow

RAY = ["runtime.mode=async", "runtime.backend=ray", "runtime.num_rollout_workers=2", "runtime.worker_threads=1",
       "runtime.learner_threads=1", "runtime.timeout_s=120", "runtime.max_staleness=1", "runtime.sync_every=2"]
TBA = ["model.warm_start=false", "algorithm.policy_loss=tb",
       "algorithm.policy_loss_schedule={beta: {start: 0.5, end: 0.1, steps: 2}}", "replay.enabled=true",
       "replay.initial_buffer_samples=64", "replay.on_policy_prob=0.95"]


def test_two_ray_searchers_feed_the_replay_buffer_for_three_steps(fast_config):
    from rlvr.train.loop import train

    cfg = fast_config(*RAY, *TBA, "trainer.steps=3", "run.name=tba_ray")
    result = train(cfg, log=lambda *_: None)
    assert not ray.is_initialized()  # the run shut down the Ray it started
    rows = [json.loads(x) for x in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert steps[0]["replay/batches_in"] >= 4  # the fill opens the admission window (2 batches) twice
    assert [r["schedule/beta"] for r in steps] == pytest.approx([0.5, 0.3, 0.1])
    assert len([r for r in steps if "sync/bytes" in r]) <= 2  # sync_every = 2
