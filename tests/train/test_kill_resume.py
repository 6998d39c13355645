"""Kill -9 at random moments: ``rlvr train`` killed with SIGKILL three times (in sampling, in the
update, mid-way through a checkpoint write; the first kill before any checkpoint exists) and
continued with ``rlvr train --resume`` each time ends bit-identical to an uninterrupted run.

The harness is ``benchmarks/kill_resume.py`` (which does 20 kills); it only watches the run folder,
nothing in the product is hooked.
"""

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8


def _harness():
    if "kill_resume" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "benchmarks" / "kill_resume.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["kill_resume"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["kill_resume"]


def test_sigkill_at_three_random_points_then_resume_is_bit_identical(fast_overrides, tmp_path):
    kr = _harness()
    env = kr.subprocess_env()  # the session's private warm-start cache (conftest) is inherited
    overrides = fast_overrides + kr.KILL  # checkpoint every 2 steps, eval every 4
    out = tmp_path / "runs"
    reference = subprocess.Popen(kr.train_cmd(out, "reference", STEPS, overrides), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        rng = random.Random(20240611)
        plan = ["generation", "update", "checkpoint"]
        rng.shuffle(plan)
        lines = []
        run = kr.killed_run(out, "killed", STEPS, overrides, env, rng, kills=3, plan=plan, first_earliest=True,
                            log=lines.append)
    finally:
        _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    report = "\n".join(lines)
    print(report)
    assert len(run.kills) == 3 and not any(k["finished"] for k in run.kills), report
    assert run.resumes == 3 and run.from_scratch >= 1, report  # the first kill came before any checkpoint
    ckpt_kill = next(k for k in run.kills if k["point"].startswith("checkpoint"))
    assert ckpt_kill["landed"] == "mid-write" and any(n.startswith(".tmp_step_") for n in ckpt_kill["leftovers"]), \
        report
    # what a kill mid-write leaves is never read as a checkpoint; the resume goes back to a complete one
    assert all(s < int(ckpt_kill["point"].split()[1]) for s in ckpt_kill["checkpoints"]), report
    assert kr.compare(out / "reference", run.run_dir, STEPS) == [], report


def test_resume_before_the_first_checkpoint_starts_over_in_the_folder(fast_config):
    import json

    from rlvr.train.loop import train

    cfg = fast_config("trainer.steps=3", "logging.checkpoint_every=2", "run.name=early")
    assert train(cfg, stop_after=1, log=lambda *_: None) is None  # stopped after step 1: no checkpoint yet
    run_dir = Path(cfg.run.output_dir) / "early"
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    lines = []
    assert train(resume=run_dir, log=lines.append).steps == 3
    assert any("no checkpoint yet: starting over" in line for line in lines)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reward_mean" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "eval/greedy_accuracy" in r] == [0, 3]  # the step-0 eval once
    assert len(json.loads((run_dir / "meta.json").read_text())["resumes"]) == 1


def test_what_a_kill_leaves_among_checkpoints_is_cleared_before_a_resume_picks_one(tmp_path):
    import os

    import torch

    from rlvr.models.tiny import build_char_tokenizer, build_tiny_model
    from rlvr.records.checkpoint import latest_checkpoint, remove_leftovers, save_checkpoint

    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2)
    run_dir = tmp_path / "run"
    for step in (1, 2, 3):
        save_checkpoint(run_dir, step, model, tok, {"learner": {"x": torch.arange(step)}}, keep=2)
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_000002", "step_000003"]  # pruned, nothing left over
    (root / ".tmp_step_000004").mkdir()  # killed mid-write
    (root / ".tmp_step_000004" / "trainer_state.pt").write_bytes(b"half")
    (root / ".del_step_000001").mkdir()  # killed mid-delete
    os.replace(root / "step_000003", root / ".old_step_000003")  # killed between the renames of a re-save
    assert latest_checkpoint(run_dir).name == "step_000002"
    remove_leftovers(run_dir)
    assert sorted(p.name for p in root.iterdir()) == ["step_000002", "step_000003"]
    assert latest_checkpoint(run_dir).name == "step_000003"
