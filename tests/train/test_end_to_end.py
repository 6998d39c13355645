import json

import pytest
import torch
from safetensors.torch import load_file

from rlvr.train.loop import train

pytestmark = pytest.mark.slow


def _weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


def test_five_step_run_writes_the_run_folder(fast_config):
    result = train(fast_config("trainer.steps=5", "logging.checkpoint_every=2", "logging.plots=true",
                               "logging.samples_every=2", "logging.num_samples=2"), log=lambda *_: None)
    d = result.run_dir
    records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    for key in ("reward_mean", "reward_std", "accuracy", "entropy", "clip_frac", "response_length",
                "grad_norm", "lr", "time_generate", "time_score", "time_train", "tokens_per_second"):
        assert key in steps[0], key
    evals = [r for r in records if "eval/greedy_accuracy" in r]
    assert [r["step"] for r in evals] == [0, 5]
    assert (d / "config.yaml").exists() and (d / "summary.md").exists()
    assert (d / "plots" / "reward.png").exists()
    samples = [json.loads(line) for line in (d / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2, 4} and all("completion" in s for s in samples)
    ckpts = sorted(p.name for p in (d / "checkpoints").iterdir())
    assert ckpts == ["step_000004", "step_000005"]  # keep_checkpoints=2
    state = torch.load(d / "checkpoints" / "step_000005" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 5 and state["source"]["sampler"]["position"] == 5 * 4
    assert set(result.before) >= {"greedy_accuracy", "sampled_reward"}


def test_resume_gives_the_same_weights_as_a_straight_run(fast_config):
    overrides = ("trainer.steps=6", "logging.checkpoint_every=3", "run.name=straight")
    straight = train(fast_config(*overrides), log=lambda *_: None).run_dir
    cfg = fast_config(*overrides[:2], "run.name=interrupted")
    assert train(cfg, stop_after=3, log=lambda *_: None) is None
    run_dir = straight.parent / "interrupted"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_000003"]
    resumed = train(resume=run_dir, log=lambda *_: None)
    assert resumed.steps == 6
    a, b = _weights(straight, 6), _weights(run_dir, 6)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the metrics of the two runs agree step by step
    def rewards(d):
        return [json.loads(l).get("reward_mean") for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert rewards(straight) == rewards(run_dir)


def test_run_folder_is_never_overwritten(fast_config):
    a = train(fast_config("trainer.steps=1"), log=lambda *_: None).run_dir
    b = train(fast_config("trainer.steps=1"), log=lambda *_: None).run_dir
    assert a != b and b.name == a.name + "-1"


def test_eval_cli_reads_a_run_folder(fast_config, capsys):
    from rlvr.cli import main

    run_dir = train(fast_config("trainer.steps=1"), log=lambda *_: None).run_dir
    assert main(["eval", "--checkpoint", str(run_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["checkpoint"].endswith("step_000001")
    assert 0 <= out["greedy_accuracy"] <= 1 and 0 <= out["sampled_reward"] <= 1
