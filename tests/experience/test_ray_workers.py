"""The Ray backend: rollout workers as Ray actors (CPU, ``ray.init(num_cpus=2)``)."""

import json
import os
import signal
import time

import pytest
import torch

ray = pytest.importorskip("ray", reason="the Ray backend needs the 'ray' extra (installed by the dev extra)")

from rlvr.config import load_config  # noqa: E402
from rlvr.experience.staleness import RolloutWorkerError  # noqa: E402

pytestmark = pytest.mark.slow

RAY = ["runtime.mode=async", "runtime.backend=ray", "runtime.num_rollout_workers=2", "runtime.worker_threads=1",
       "runtime.learner_threads=1", "runtime.timeout_s=120"]


def _cfg(fast_config, *overrides):
    return fast_config("model.warm_start=false", *RAY, *overrides)


def _steps(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"reward_mean"' in x]


def test_two_ray_workers_train_five_steps_and_resume(fast_config):
    from rlvr.train.loop import train

    cfg = _cfg(fast_config, "trainer.steps=5", "logging.checkpoint_every=2", "run.name=ray",
               "runtime.weight_sync=sparse", "rollout.dtype=bfloat16", "runtime.debug_checksums=true")
    assert train(cfg, stop_after=2, log=lambda *_: None) is None
    assert not ray.is_initialized()  # the run shut down the Ray it started
    run_dir = cfg.run.output_dir
    from pathlib import Path

    run_dir = Path(run_dir) / "ray"
    result = train(resume=run_dir, log=lambda *_: None)
    steps = _steps(run_dir)
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5] and result.steps == 5
    assert max(r["staleness_max"] for r in steps) <= 1
    assert {r["batch_index"] for r in steps} == set(range(5)) or len({r["batch_index"] for r in steps}) == 5
    synced = [r for r in steps if "sync/bytes" in r]
    assert synced and all(r["sync/bytes"] <= r["sync/dense_bytes"] for r in synced)
    assert not ray.is_initialized()


def test_a_killed_ray_worker_gives_a_named_error_not_a_hang(fast_config):
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.warmstart.sft import resolve_model_path
    from rlvr.rollout.hf import HFRolloutEngine
    from rlvr.tasks import make_task
    from rlvr.experience.sources import make_source
    from rlvr.experience.batch import PromptSampler
    from rlvr.experience.producer import build_producer

    cfg = _cfg(fast_config, "runtime.max_staleness=4")
    task = make_task(cfg.task.name, **cfg.task.options)
    path = resolve_model_path(cfg, task, progress=False, log=lambda *_: None)
    model, tok = load_model_and_tokenizer(path)
    sampler = PromptSampler(task.problems("train"), 0)
    source = make_source(cfg, build_producer(cfg, HFRolloutEngine(model, tok), task), model, tok, task, sampler,
                         model_path=path)
    try:
        source.publish_weights(model, 0, 0)
        source.next_batch(0)
        os.kill(source.pool.pids[0], signal.SIGKILL)
        t0 = time.perf_counter()
        with pytest.raises(RolloutWorkerError, match="rollout worker 0"):
            for _ in range(20):
                source.next_batch(0)
        assert time.perf_counter() - t0 < 60
    finally:
        source.close()
    assert not ray.is_initialized()


def _tree(root: int) -> set[int]:
    from pathlib import Path

    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo.extend(children.get(pid, []))
    return out


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_stops_every_worker_and_leaves_no_orphans(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    FAST = _fast_overrides()

    rlvr = str(Path(sys.executable).with_name("rlvr"))
    cmd = [rlvr, "train", "--config", "configs/grpo_arithmetic_tiny.yaml", *FAST, "model.warm_start=false", *RAY,
           "trainer.steps=500", f"run.output_dir={tmp_path}", "run.name=ctrl_c"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "ctrl_c" / "metrics.jsonl"
    deadline = time.time() + 400  # generous: CI machines may be loaded
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and '"reward_mean"' in metrics.read_text():
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    pids = _tree(proc.pid) - {proc.pid}
    assert len(pids) >= 3  # Ray's processes and the two worker actors
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=180)
    time.sleep(5)
    assert [p for p in pids if _alive(p)] == []


def _fast_overrides() -> list[str]:
    """tests/conftest.py's FAST overrides (imported by path: several conftest modules exist)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_rlvr_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.FAST)
