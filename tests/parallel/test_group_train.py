"""``torchrun -m rlvr train`` with a learner group: the run a single process makes, a resume that continues it
exactly, the same group as Ray actors, and one line per step saying how many ranks ran.

Each launch costs about 10 s of start-up on 2 cores (imports, rendezvous, Ray's start), so there are two: a
2-rank FSDP2 PPO run of 3 steps (the policy and its critic sharded) as Ray actors (``rlvr train --nproc 2`` with
``trainer.dist.launcher=ray``) with a checkpoint at step 2 (every rank's shards, DCP), and its resume from that
checkpoint under torchrun (step 3's checkpoint removed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def _torchrun(args: list[str], nproc: int = 2, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m rlvr train ARGS``, or ``rlvr train --nproc N ARGS``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
             "-m", "rlvr", "train"] if launcher == "torchrun" else
            [sys.executable, "-m", "rlvr", "train", "--nproc", str(nproc)])
    done = subprocess.run([*head, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def _weights(run: Path, step: int) -> dict:
    return load_file(run / "checkpoints" / f"step_{step:06d}" / "model.safetensors")


@pytest.mark.slow
def test_a_learner_group_trains_resumes_and_matches_one_process(tmp_path, fast_overrides):
    from rlvr.config import load_config
    from rlvr.train.loop import train

    common = [*fast_overrides, "trainer.steps=3", "logging.checkpoint_every=2", "logging.keep_checkpoints=3",
              "rollout.prompts_per_step=5", "rollout.group_size=3", "trainer.micro_batch_size=3", "run.seed=3", "critic.warmup_steps=1",
              "reward.weights={correct: 1.0, format: 1.0}"]  # a signal for a barely warm-started model
    # 2 ranks as Ray actors in a placement group (rlvr train --nproc 2 with trainer.dist.launcher=ray)
    group = _torchrun(["--config", "configs/ppo_arithmetic_tiny.yaml", *common, "trainer.dist.engine=fsdp2",
                       "trainer.dist.launcher=ray", f"run.output_dir={tmp_path / 'group'}", "logging.progress=true"],
                      launcher="rlvr")
    run = next((tmp_path / "group").iterdir())
    out = group.stdout + group.stderr
    assert "learner: 2 rank(s), fsdp2" in out
    assert "2 ranks" in out  # the progress line (logging.progress, not a terminal: one line per step)
    records = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"dist/ranks"' in line]
    assert len(records) == 3
    # the checkpoint: the HF export from rank 0, and each rank's shards of the model and the optimizer (DCP)
    shards = run / "checkpoints" / "step_000002" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "rng.pt"]
    assert "optimizer" not in torch.load(shards.parent / "trainer_state.pt", weights_only=False)["learner"]
    a2, a = _weights(run, 2), _weights(run, 3)
    assert max(float((a[k] - a2[k]).abs().max()) for k in a) > 1e-5  # step 3 trained

    # resume from step 2 (step 3's checkpoint removed) under torchrun: step 3 again, bit for bit, so a resume is
    # exact and a torchrun group computes what the Ray group computed
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000003")
    _torchrun(["--resume", str(resumed)])
    b = _weights(resumed, 3)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0
    ca, cb = (load_file(r / "checkpoints" / "step_000003" / "critic_0" / "model.safetensors") for r in (run, resumed))
    assert ca.keys() == cb.keys(), (sorted(ca), sorted(cb))
    assert all(torch.equal(ca[k], cb[k]) for k in ca), {k: float((ca[k] - cb[k]).abs().max()) for k in ca}  # the critic resumed too

    # the group's sharded checkpoint resumed in one process (trainer.dist.engine=none: the shards read without a
    # process group, resharded from 2 ranks to 1): step 3 again, to float reassociation
    import yaml

    torch.set_num_threads(1)
    alone = tmp_path / "alone"
    shutil.copytree(run, alone)
    shutil.rmtree(alone / "checkpoints" / "step_000003")
    cfg = yaml.safe_load((alone / "config.yaml").read_text())
    cfg["trainer"]["dist"]["engine"] = "none"
    (alone / "config.yaml").write_text(yaml.safe_dump(cfg))
    train(resume=alone, log=lambda *a: None)
    c = _weights(alone, 3)
    assert max(float((a[k] - c[k]).abs().max()) for k in a) < 1e-5

    # one process, same config: the same run to float reassociation (rollouts sampled from the same weights)
    single = train(load_config("configs/ppo_arithmetic_tiny.yaml",
                               [*common, f"run.output_dir={tmp_path / 'single'}"]), log=lambda *a: None)
    s = _weights(single.run_dir, 3)
    assert s.keys() == a.keys()
    assert max(float((a[k] - s[k]).abs().max()) for k in a) < 1e-5


def test_launch_errors_name_the_fix(tmp_path, monkeypatch, capsys):
    from rlvr.cli import main

    assert main(["train", "--nproc", "2", "--config", "configs/grpo_arithmetic_tiny.yaml"]) == 2
    assert "trainer.dist.engine=ddp" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun without trainer.dist: two separate runs in one folder
    assert main(["train", "--config", "configs/grpo_arithmetic_tiny.yaml", f"run.output_dir={tmp_path}"]) == 2
    assert "WORLD_SIZE=2" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
