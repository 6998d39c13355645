"""Asynchronous training: staleness bound, stale-sample accounting, sync equivalence, resume."""

import json
import random
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from rlvr.config import ConfigError, load_config
from rlvr.rollout.base import Rollout
from rlvr.tasks import make_task, register_task
from rlvr.experience.async_source import AsyncSource
from rlvr.experience.workers import RolloutWorker, _LocalBuffer
from rlvr.experience.batch import Experience, PromptSampler
from rlvr.experience.staleness import StalenessBuffer, apply_stale_policy
from rlvr.weights.board import WeightBoard
from rlvr.weights.sync import WeightPublisher


# ------------------------------------------------------------------ a task the untrained model gets partly right

@register_task("test_digits")
def _digits_task(**options):
    """Arithmetic prompts; reward = share of digits in the completion (varies even for a random model)."""
    task = make_task("arithmetic", **options)

    def score(problem, text):
        r = sum(c.isdigit() for c in text) / max(1, len(text))
        return {"reward": r, "correct": float(r > 0.5)}

    task.score = score
    return task


def _cfg(tmp_path, *overrides):
    threads = torch.get_num_threads()
    return load_config("configs/grpo_arithmetic_tiny.yaml", [
        "task.name=test_digits", "task.options={min_digits: 1, max_digits: 2, ops: '+-', num_train: 500, num_eval: 20}",
        "model.warm_start=false", "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=4",
        "trainer.micro_batch_size=16", "trainer.num_minibatches=2", "trainer.lr=1e-3", "trainer.warmup_steps=0",
        "eval.num_problems=8", "eval.samples_per_problem=2", "logging.progress=false", "logging.plots=false",
        f"runtime.learner_threads={threads}", f"runtime.worker_threads={threads}",
        f"run.output_dir={tmp_path / 'runs'}", *overrides])


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


@pytest.mark.slow
def test_async_with_staleness_0_and_one_worker_reproduces_sync(tmp_path):
    from rlvr.train.loop import train

    # trainer.old_logp=recompute: sync would otherwise reuse its engine's log-probs as old_logp (equal to
    # the recompute within 1e-4, not bitwise), which rollout workers never do (rlvr.train.old_logp)
    sync = train(_cfg(tmp_path, "trainer.steps=4", "run.name=sync", "trainer.old_logp=recompute"),
                 log=lambda *_: None).run_dir
    asyn = train(_cfg(tmp_path, "trainer.steps=4", "run.name=async", "runtime.mode=async",
                      "runtime.max_staleness=0", "trainer.old_logp=recompute"), log=lambda *_: None).run_dir
    a, b = _records(sync), _records(asyn)
    steps_a = [r for r in a if "reward_mean" in r]
    steps_b = [r for r in b if "reward_mean" in r]
    assert len(steps_a) == len(steps_b) == 4
    assert len({r["reward_mean"] for r in steps_a}) > 1  # the test has signal: rewards vary
    for x, y in zip(steps_a, steps_b):
        for key in ("reward_mean", "accuracy", "response_length", "loss", "grad_norm", "entropy"):
            assert x[key] == y[key], (x["step"], key, x[key], y[key])
        assert y["staleness_max"] == 0
    wa, wb = _weights(sync, 4), _weights(asyn, 4)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    w0 = load_file(str(sync / "checkpoints" / "step_000004" / "model.safetensors"))
    assert all(torch.equal(w0[k], wa[k]) for k in wa)
    # the same prompts were drawn: the samplers stopped at the same place
    sa = torch.load(sync / "checkpoints" / "step_000004" / "trainer_state.pt", weights_only=False)["source"]
    sb = torch.load(asyn / "checkpoints" / "step_000004" / "trainer_state.pt", weights_only=False)["source"]
    # (a batch the worker admitted after the last step may have drawn its prompts already: it is pending)
    drawn_by_pending = sum(len(d) for p in sb["async"]["pending"] for d in p["drawn"])
    assert sb["async"]["sampler"]["position"] - sa["sampler"]["position"] == drawn_by_pending


@pytest.mark.slow
def test_async_resume_neither_loses_nor_repeats_a_batch(tmp_path):
    from rlvr.train.loop import train

    cfg = _cfg(tmp_path, "trainer.steps=6", "logging.checkpoint_every=3", "run.name=r", "runtime.mode=async",
               "runtime.max_staleness=2", "runtime.sync_every=1")
    assert train(cfg, stop_after=3, log=lambda *_: None) is None
    run_dir = tmp_path / "runs" / "r"
    state = torch.load(run_dir / "checkpoints" / "step_000003" / "trainer_state.pt", weights_only=False)
    pending = state["source"]["async"]["pending"]
    position = state["source"]["async"]["sampler"]["position"]
    assert position == 4 * (3 + sum(len(p["drawn"]) for p in pending))  # drawn = trained + carried by pending
    train(resume=run_dir, log=lambda *_: None)
    steps = [r for r in _records(run_dir) if "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]  # no duplicated or missing steps
    slots = [r["batch_index"] for r in steps]
    assert sorted(slots) == sorted(set(slots))  # no batch trained twice
    assert max(r["staleness_max"] for r in steps) <= 2


def test_config_refuses_an_unbounded_loss_off_policy_and_resolves_auto():
    with pytest.raises(ConfigError, match="trust region"):
        load_config(None, ["runtime.mode=async", "algorithm.policy_loss=gpg"])
    assert load_config(None, ["runtime.mode=async", "algorithm.policy_loss=gpg",
                              "algorithm.mismatch.method=tis"]).runtime.staleness() == 1
    assert load_config(None, ["runtime.mode=async"]).algorithm.mismatch.method == "decoupled"
    assert load_config(None, ["runtime.mode=async", "runtime.max_staleness=0"]).algorithm.mismatch.method == "none"
    assert load_config(None, []).algorithm.mismatch.method == "none"
    with pytest.raises(ConfigError, match="runtime.mode=async"):
        load_config(None, ["runtime.max_staleness=2"])
    with pytest.raises(ConfigError, match="runtime.sync_every"):
        load_config(None, ["runtime.mode=async", "runtime.max_staleness=1", "runtime.sync_every=3"])
    with pytest.raises(ConfigError, match="rollout.dtype"):
        load_config(None, ["rollout.engine=hf", "rollout.dtype=bfloat16"])
    assert load_config(None, ["run.backend=ray"]).runtime.backend == "ray"  # first-wave name still works


# ------------------------------------------------------------------ plain classes with stub engines

def _exp(version: int, prompt_idx: list[int], G: int = 2, t_len: int = 3) -> Experience:
    B = len(prompt_idx) * G
    group = torch.arange(len(prompt_idx)).repeat_interleave(G)
    rollout = Rollout(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                      completion_ids=torch.ones(B, t_len, dtype=torch.long),
                      completion_mask=torch.ones(B, t_len, dtype=torch.long), rollout_logp=torch.zeros(B, t_len),
                      finish_reason=["stop"] * B, prompt_index=group.clone(), texts=["x"] * B,
                      policy_version=version)
    return Experience(rollout=rollout, rewards=torch.rand(B), reward_components={"correct": torch.zeros(B)},
                      group=group, problems=[prompt_idx[g] for g in group.tolist()],
                      timings={"generate": 0.0, "score": 0.0})


class _StubEngine:
    def __init__(self):
        self.model = torch.nn.Linear(3, 3)
        self.policy_version = 0

    def update_weights(self, state_dict, policy_version):
        self.policy_version = policy_version


class _StubProducer:
    """Sleeps ``gen_s`` per batch (a random time in ``[0, 2 gen_s]`` with ``jitter``, seeded by the batch),
    then returns 2 prompts x 2 rows made by the engine's version."""

    prompts_per_step = 2

    def __init__(self, gen_s: float, jitter: bool = False):
        self.engine, self.gen_s, self.jitter = _StubEngine(), gen_s, jitter

    def produce(self, draws, seed):
        problems = draws.next(self.prompts_per_step)
        time.sleep(self.gen_s * (2 * random.Random(seed).random() if self.jitter else 1.0))
        return _exp(self.engine.policy_version, problems)


def _simulate(gen_s: float, train_s: float, S: int, workers: int, policy: str, steps: int = 12, jitter=False):
    """A sleep-paced learner consuming from sleep-paced workers through the real buffer and source."""
    problems = list(range(1000))
    sampler = PromptSampler(problems, seed=0)
    buffer = _LocalBuffer(sampler, S, run_seed=0)
    model = torch.nn.Linear(3, 3)
    cfg = SimpleNamespace(runtime=SimpleNamespace(staleness=lambda: S, stale_policy=policy, sync_every=1,
                                                  timeout_s=30.0, num_rollout_workers=workers))
    stop = threading.Event()

    class Pool:
        def __init__(self):
            self.buffer = buffer

        def start(self):
            self.threads = []
            for i in range(workers):
                w = RolloutWorker(i, _StubProducer(gen_s, jitter), problems, buffer)
                w.model = w.producer.engine.model
                t = threading.Thread(target=w.loop, args=(stop, 0.05), daemon=True)
                t.start()
                self.threads.append(t)

        post_weights = staticmethod(lambda v, b, p, a: buffer.board.post(v, b, p, a))
        publish = staticmethod(buffer.publish)
        get = staticmethod(buffer.get)
        check_alive = staticmethod(lambda: None)
        counts = staticmethod(buffer.counts)

        def close(self):
            stop.set()
            buffer.close()

    source = AsyncSource(cfg, Pool(), WeightPublisher("full", torch.float32))
    version, seen, stats = 0, [], []
    source.publish_weights(model, version, 0)
    for step in range(steps):
        exp = source.next_batch(version)
        stats.append(exp.extras["runtime"])
        seen.extend(exp.problems)
        time.sleep(train_s)
        with torch.no_grad():
            model.weight.add_(1.0)
        version += 1
        source.publish_weights(model, version, step + 1)
    source.close()
    return stats, seen, buffer, source


@pytest.mark.parametrize("gen_s,train_s", [(0.002, 0.03), (0.03, 0.002)], ids=["fast-engine", "slow-engine"])
@pytest.mark.parametrize("S", [0, 1, 3])
def test_staleness_never_exceeds_S_with_one_worker(gen_s, train_s, S):
    stats, seen, _, _ = _simulate(gen_s, train_s, S, workers=1, policy="accept")
    assert max(s["staleness_max"] for s in stats) <= S
    if gen_s < train_s and S > 0:  # a fast engine runs ahead, exactly as far as allowed
        assert max(s["staleness_max"] for s in stats[2:]) == S
    # every prompt of the sampler's stream trained once (2 rows each), none skipped
    assert len(seen) == 2 * len(set(seen)) and set(seen) == set(PromptSampler(list(range(1000)), 0).next_indices(24))


@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize("S", [0, 1, 2])
def test_staleness_never_exceeds_S_with_several_randomly_paced_workers(workers, S):
    """Issue 27.1: with several workers batches finish out of order; the learner still trains slot k at
    step k (in order), so no row is ever more than S versions old and the stale policy never acts."""
    stats, seen, _, source = _simulate(0.02, 0.004, S, workers=workers, policy="accept", steps=16, jitter=True)
    assert [s["batch_index"] for s in stats] == list(range(16))
    assert max(s["staleness_max"] for s in stats) <= S
    assert source.totals["masked"] == source.totals["dropped"] == 0
    assert len(seen) == 2 * len(set(seen)) and set(seen) == set(PromptSampler(list(range(1000)), 0).next_indices(32))


def test_a_batch_finishing_early_waits_for_the_slots_before_it():
    buf = StalenessBuffer(PromptSampler(list(range(50)), 0), max_staleness=2)
    a, b = buf.admit(0.01), buf.admit(0.01)
    buf.put(b.index, "b")  # slot 1 finishes first
    assert buf.get(0.05) is None  # the learner waits for slot 0
    buf.put(a.index, "a")
    assert [buf.get(0.05)[1], buf.get(0.05)[1]] == ["a", "b"]
    state = buf.state_dict()
    fresh = StalenessBuffer(PromptSampler(list(range(50)), 0), max_staleness=2)
    fresh.load_state_dict({**state, "next_index": 5, "pending": [{"index": 3, "seed": 1, "drawn": []},
                                                                 {"index": 4, "seed": 2, "drawn": []}]}, 3)
    assert fresh.next_consume == 3  # a resumed run consumes its first pending slot first
    fresh.load_state_dict({**state, "next_index": 5, "pending": []}, 5)
    assert fresh.next_consume == 5


@pytest.mark.parametrize("policy", ["accept", "mask", "drop"])
def test_several_workers_every_sample_trained_masked_or_dropped(policy):
    stats, seen, buffer, source = _simulate(0.02, 0.005, 1, workers=3, policy=policy, steps=15)
    rows = sum(s["samples_accepted"] + s["samples_masked"] + s["samples_dropped"] for s in stats)
    generated = rows  # every consumed row is counted exactly once in one of the three
    assert rows == sum(source.totals.values())
    assert len(seen) == 2 * len(set(seen))  # no prompt trained twice
    consumed = len(set(seen)) + sum(s["samples_dropped"] for s in stats) // 2
    in_flight = sum(len(j.drawn) for j in buffer.running.values()) * 2 + sum(len(j.drawn) * 2 for j, _ in buffer.ready.values())
    assert buffer.sampler.position == consumed + in_flight  # none lost: drawn = trained + dropped + unconsumed
    if policy == "accept":
        assert sum(s["samples_masked"] + s["samples_dropped"] for s in stats) == 0
    assert generated >= 15 * 4


def test_apply_stale_policy_by_hand():
    exp = _exp(0, [10, 11, 12], G=2)
    exp.rollout.versions = torch.tensor([3, 3, 1, 1, 3, 3])  # group 1 is made by an older policy
    out, c = apply_stale_policy(exp, policy_version=4, max_staleness=2, policy="accept")
    assert out is exp and c["stale"] == 2 and c["staleness_max"] == 3 and c["accepted"] == 6
    out, c = apply_stale_policy(_with_versions([3, 3, 1, 1, 3, 3]), 4, 2, "mask")
    assert out.extras["sample_weight"].tolist() == [1, 1, 0, 0, 1, 1] and c["masked"] == 2 and c["accepted"] == 4
    out, c = apply_stale_policy(_with_versions([3, 3, 1, 3, 3, 3]), 4, 2, "drop")  # one stale member: whole group
    assert out.group.tolist() == [0, 0, 2, 2] and c["dropped"] == 2 and c["accepted"] == 4
    out, c = apply_stale_policy(_with_versions([0] * 6), 4, 2, "drop")
    assert out is None and c["dropped"] == 6


def _with_versions(v):
    exp = _exp(0, [10, 11, 12], G=2)
    exp.rollout.versions = torch.tensor(v)
    return exp


def test_admission_waits_for_the_weights_the_bound_needs():
    buf = StalenessBuffer(PromptSampler(list(range(50)), 0), max_staleness=1)
    jobs = [buf.admit(0.01) for _ in range(3)]
    assert [j.index if j else None for j in jobs] == [0, 1, None]  # slot 2 needs step 1's weights
    buf.publish(1)
    assert buf.admit(0.01).index == 2


def test_buffer_state_regenerates_pending_batches_with_their_prompts():
    sampler = PromptSampler(list(range(50)), 0)
    buf = StalenessBuffer(sampler, max_staleness=2)
    a, b = buf.admit(0.01), buf.admit(0.01)
    da, db = buf.draw(a.index, 3), buf.draw(b.index, 3)
    buf.put(a.index, "done-a")
    state = buf.state_dict()
    assert [p["index"] for p in state["pending"]] == [0, 1] and state["pending"][0]["drawn"] == [da]
    fresh = StalenessBuffer(PromptSampler(list(range(50)), 0), max_staleness=2)
    fresh.load_state_dict(state, published_step=0)
    ra, rb = fresh.admit(0.01), fresh.admit(0.01)
    assert (ra.index, rb.index, ra.seed) == (0, 1, a.seed)
    assert fresh.draw(0, 3) == da and fresh.draw(1, 3) == db
    nxt = fresh.admit(0.01)
    assert nxt.index == 2 and fresh.draw(2, 3) not in (da, db)
    assert set(fresh.running[2].drawn[0]).isdisjoint(da + db)


def test_weight_board_chains_and_anchors():
    board = WeightBoard()
    assert board.since(None) == []
    board.post(0, None, "full0")
    board.post(1, 0, "p1")
    board.post(2, 1, "p2")
    assert board.since(None) == ["full0", "p1", "p2"] and board.since(0) == ["p1", "p2"]
    assert board.since(1) == ["p2"] and board.since(2) == []
    board.post(3, 2, "p3", anchor="full3")
    assert board.since(1) == ["full3"] and board.since(3) == [] and board.version == 3
