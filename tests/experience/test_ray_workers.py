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
    assert [r["batch_index"] for r in steps] == [0, 1, 2, 3, 4]  # slots in order, across the resume
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
    deadline = time.time() + 10  # Ray's processes may take a few seconds to go
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert [p for p in pids if _alive(p)] == []


def _fast_overrides() -> list[str]:
    """tests/conftest.py's FAST overrides (imported by path: several conftest modules exist)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_rlvr_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.FAST)


# ------------------------------------------------------------- the staleness bound with stub Ray workers


class _StubRayEngine:
    def __init__(self):
        self.model = torch.nn.Linear(3, 3)
        self.policy_version = 0

    def update_weights(self, state_dict, policy_version):
        self.policy_version = policy_version


class _StubRayProducer:
    """2 prompts x 2 rows per batch after a random sleep in [0, 2 gen_s] (seeded by the batch)."""

    prompts_per_step = 2

    def __init__(self, gen_s):
        self.engine, self.gen_s = _StubRayEngine(), gen_s

    def produce(self, draws, seed):
        import random

        from rlvr.experience.batch import Experience
        from rlvr.rollout.base import Rollout

        problems = draws.next(self.prompts_per_step)
        time.sleep(self.gen_s * 2 * random.Random(seed).random())
        b = 4
        group = torch.tensor([0, 0, 1, 1])
        rollout = Rollout(prompt_ids=torch.ones(b, 2, dtype=torch.long), prompt_mask=torch.ones(b, 2, dtype=torch.long),
                          completion_ids=torch.ones(b, 3, dtype=torch.long),
                          completion_mask=torch.ones(b, 3, dtype=torch.long), rollout_logp=torch.zeros(b, 3),
                          finish_reason=["stop"] * b, prompt_index=group.clone(), texts=["x"] * b,
                          policy_version=self.engine.policy_version)
        return Experience(rollout=rollout, rewards=torch.zeros(b), reward_components={"correct": torch.zeros(b)},
                          group=group, problems=[problems[g] for g in group.tolist()],
                          timings={"generate": 0.0, "score": 0.0})


class _StubRayWorker:
    def __init__(self, worker_id, buffer, gen_s, timeout):
        import torch as _torch

        from rlvr.experience.ray_workers import _RemoteBuffer
        from rlvr.experience.workers import RolloutWorker

        _torch.set_num_threads(1)
        self.worker = RolloutWorker(worker_id, _StubRayProducer(gen_s), list(range(1000)),
                                    _RemoteBuffer(buffer, timeout), resolve=lambda refs: ray.get(refs) if refs else [])

    def run(self):
        self.worker.loop(None, 0.05)
        return "closed"


@pytest.mark.parametrize("workers,S", [(3, 1)])  # thread-backend tests cover 2-4 workers x S = 0-2
def test_staleness_never_exceeds_S_with_stub_ray_workers(workers, S):
    """Issue 27.1 on the Ray backend: randomly paced stub actors finish batches out of order; the learner
    trains them in slot order and no row is more than S versions old."""
    import sys
    from types import SimpleNamespace

    from rlvr.experience.async_source import AsyncSource
    from rlvr.experience.batch import PromptSampler
    from rlvr.experience.ray_workers import RayPool
    from rlvr.weights.sync import WeightPublisher

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stubs travel by value
    rt = SimpleNamespace(staleness=lambda: S, stale_policy="accept", sync_every=1, timeout_s=60.0,
                         num_rollout_workers=workers, ray_address=None)
    cfg = SimpleNamespace(runtime=rt, run=SimpleNamespace(seed=0, device="cpu"))

    class StubPool(RayPool):
        def start(self):
            actor = ray.remote(num_cpus=0)(_StubRayWorker)
            self.workers = [actor.remote(i, self.buffer, 0.03, 60.0) for i in range(workers)]
            self.pids = [0] * workers
            self.run_refs = [w.run.remote() for w in self.workers]

    pool = StubPool(cfg, "unused", PromptSampler(list(range(1000)), seed=0), threads=1)
    source = AsyncSource(cfg, pool, WeightPublisher("full", torch.float32))
    model, version, stats, seen = torch.nn.Linear(3, 3), 0, [], []
    try:
        source.publish_weights(model, version, 0)
        for step in range(12):
            exp = source.next_batch(version)
            stats.append(exp.extras["runtime"])
            seen.extend(exp.problems)
            time.sleep(0.005)
            with torch.no_grad():
                model.weight.add_(1.0)
            version += 1
            source.publish_weights(model, version, step + 1)
    finally:
        source.close()
    assert not ray.is_initialized()
    assert [s["batch_index"] for s in stats] == list(range(12))
    assert max(s["staleness_max"] for s in stats) <= S
    assert len(seen) == 2 * len(set(seen)) == 48
