"""Replay buffers (TBA per-prompt buffers, TRL GRPO-with-replay), trajectory balance, beta schedule."""

import io
import json
from pathlib import Path

import pytest
import torch

from rlvr import algorithms as A
from rlvr.config import ConfigError, load_config
from rlvr.rollout.base import Rollout
from rlvr.tasks import make_task, register_task
from rlvr.tasks.base import Problem
from rlvr.experience.batch import Experience
from rlvr.experience.replay import ReplayBuffer, VarianceReplay
from rlvr.train.schedule import linear_value, scheduled_loss_params

PROBLEMS = [Problem(prompt=f"p{i}", answer=str(i)) for i in range(10)]
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}  # chi-square 0.999 quantiles by degrees of freedom


def _exp(rows: list[tuple[int, list[int], float, int]]) -> Experience:
    """rows: (problem index, completion tokens, reward, version); a group per distinct problem."""
    keys = list(dict.fromkeys(r[0] for r in rows))
    B, T = len(rows), max(len(r[1]) for r in rows)
    comp = torch.zeros(B, T, dtype=torch.long)
    cmask = torch.zeros(B, T, dtype=torch.long)
    for i, (_, toks, _, _) in enumerate(rows):
        comp[i, :len(toks)] = torch.tensor(toks)
        cmask[i, :len(toks)] = 1
    prompt_ids = torch.tensor([[0, 100 + r[0]] for r in rows])  # left pad 0, one prompt token
    prompt_mask = torch.tensor([[0, 1]] * B)
    group = torch.tensor([keys.index(r[0]) for r in rows])
    rollout = Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=comp, completion_mask=cmask,
                      rollout_logp=-0.5 * cmask.float(), finish_reason=["stop"] * B, prompt_index=group.clone(),
                      texts=[" ".join(map(str, r[1])) for r in rows], policy_version=min(r[3] for r in rows),
                      versions=torch.tensor([r[3] for r in rows]))
    rewards = torch.tensor([r[2] for r in rows], dtype=torch.float32)
    return Experience(rollout=rollout, rewards=rewards, reward_components={"reward": rewards, "correct": rewards},
                      group=group, problems=[PROBLEMS[r[0]] for r in rows])


def _buffer(**kw) -> ReplayBuffer:
    return ReplayBuffer(PROBLEMS, pad_id=0, seed=kw.pop("seed", 0), **kw)


# ------------------------------------------------------------------ buffer contents

def test_capacity_and_dedup_keep_the_newest_copy():
    buf = _buffer(capacity=3)
    buf.add(_exp([(0, [1], 0.0, 0), (0, [2], 0.0, 0), (0, [1], 1.0, 1)]))  # [1] twice: the newer one stays
    items = buf.buffers[0].items
    assert [it.completion for it in items] == [(2,), (1,)] and items[-1].version == 1 and items[-1].reward == 1.0
    assert buf.counts["duplicates"] == 1
    buf.add(_exp([(0, [3], 0.0, 2), (0, [4], 0.0, 3)]))
    assert [it.completion for it in buf.buffers[0].items] == [(1,), (3,), (4,)]  # oldest version evicted
    assert buf.num_items == 3 and buf.num_prompts == 1


def test_items_are_ordered_by_the_version_that_made_them():
    buf = _buffer(capacity=10)
    buf.add(_exp([(0, [5], 0.0, 5), (0, [2], 0.0, 2), (0, [9], 0.0, 9), (0, [1], 0.0, 1)]))
    buf.add(_exp([(0, [3], 0.0, 3)]))  # a late batch of an old version goes in its place
    assert [it.version for it in buf.buffers[0].items] == [1, 2, 3, 5, 9]
    buf2 = _buffer(capacity=2)
    buf2.add(_exp([(0, [7], 0.0, 7), (0, [1], 0.0, 1), (0, [4], 0.0, 4)]))
    assert [it.version for it in buf2.buffers[0].items] == [4, 7]  # eviction drops the oldest version


def test_sampled_batch_rebuilds_padded_tensors():
    buf = _buffer(on_policy_prob=1.0)
    buf.add(_exp([(3, [1, 2, 3], 1.0, 0), (3, [4], 0.0, 0)]))
    exp = buf.sample(1, 2)
    r = exp.rollout
    assert exp.problems[0] is PROBLEMS[3] and r.completion_ids.shape == (2, 3)
    lens = sorted(r.completion_mask.sum(-1).tolist())
    assert lens == [1, 3] and r.prompt_ids[:, -1].tolist() == [103, 103] and r.prompt_mask.tolist() == [[1], [1]]
    assert sorted(exp.rewards.tolist()) == [0.0, 1.0] and exp.group.tolist() == [0, 0]
    assert torch.equal(r.rollout_logp, -0.5 * r.completion_mask.float())


# ------------------------------------------------------------------ sampling frequencies

def _chi2(counts: list[int], probs: list[float]) -> float:
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs))


def test_reward_prioritised_draws_follow_softmax_of_inv_temp_times_reward():
    rewards = [0.0, 0.5, 1.0, 2.0]
    buf = _buffer(on_policy_prob=0.0, inv_temp=1.5, seed=123)
    buf.add(_exp([(0, [i + 1], r, 0) for i, r in enumerate(rewards)]))
    counts = [0] * 4
    for _ in range(4000):
        exp = buf.sample(1, 1)
        counts[int(exp.rollout.completion_ids[0, 0]) - 1] += 1
    probs = torch.softmax(1.5 * torch.tensor(rewards), 0).tolist()
    assert _chi2(counts, probs) < CHI2_999[3], (counts, probs)
    assert _chi2(counts, [0.25] * 4) > 100  # the test has power: uniform draws would fail it
    uniform = _buffer(on_policy_prob=0.0, inv_temp=0.0, seed=5)
    uniform.add(_exp([(0, [i + 1], r, 0) for i, r in enumerate(rewards)]))
    counts = [0] * 4
    for _ in range(4000):
        counts[int(uniform.sample(1, 1).rollout.completion_ids[0, 0]) - 1] += 1
    assert _chi2(counts, [0.25] * 4) < CHI2_999[3]  # inv_temp = 0: uniform (TBA's GSM8K setting)


def test_on_policy_share_of_prompts_is_m():
    m = 0.7
    buf = _buffer(on_policy_prob=m, seed=7)
    buf.add(_exp([(k, [1], 0.0, 0) for k in range(4)]))  # wave 1: prompts 0..3
    buf.mark_sync()
    buf.add(_exp([(k, [2], 0.0, 1) for k in (8, 9)]))  # wave 2 (after the sync): prompts 8, 9 are online
    online = total = 0
    for _ in range(3000):
        exp = buf.sample(1, 1)
        online += exp.extras["replay"]["replay/on_policy_frac"] == 1.0
        total += 1
        if exp.extras["replay"]["replay/on_policy_frac"] == 1.0:
            assert exp.problems[0].prompt in ("p8", "p9") and exp.rollout.versions.tolist() == [1]
    assert _chi2([online, total - online], [m, 1 - m]) < CHI2_999[1], online / total
    assert _chi2([online, total - online], [0.5, 0.5]) > 50


def test_online_draw_takes_only_the_newest_wave_of_a_prompt():
    buf = _buffer(on_policy_prob=1.0, capacity=100)
    buf.add(_exp([(0, [t], 0.0, 0) for t in range(1, 9)]))
    buf.mark_sync()
    buf.add(_exp([(0, [t], 1.0, 1) for t in range(20, 24)]))
    for _ in range(20):
        exp = buf.sample(1, 4)
        assert exp.rollout.versions.tolist() == [1, 1, 1, 1]
        assert len(set(exp.rollout.completion_ids[:, 0].tolist())) == 4  # without replacement


def test_recency_and_reward_priority_prefer_different_items():
    rows = [(0, [v + 1], float(9 - v), v) for v in range(10)]  # newer versions have lower rewards
    by_reward = _buffer(on_policy_prob=0.0, inv_temp=3.0, priority="reward", seed=1)
    by_recency = _buffer(on_policy_prob=0.0, inv_temp=3.0, priority="recency", seed=1)
    by_reward.add(_exp(rows))
    by_recency.add(_exp(rows))
    v_reward = torch.cat([by_reward.sample(1, 3).rollout.versions for _ in range(200)]).float().mean()
    v_recency = torch.cat([by_recency.sample(1, 3).rollout.versions for _ in range(200)]).float().mean()
    assert v_reward < 1.5 and v_recency > 7.5, (v_reward, v_recency)


def test_with_replacement_only_when_a_buffer_is_too_small_and_counted():
    buf = _buffer(on_policy_prob=0.0)
    buf.add(_exp([(0, [1], 1.0, 0), (0, [2], 0.0, 0), (1, [1], 0.0, 0), (1, [2], 0.0, 0), (1, [3], 0.0, 0),
                  (1, [4], 0.0, 0)]))
    counts = []
    for _ in range(10):
        exp = buf.sample(1, 4)
        assert exp.rewards.shape == (4,)
        counts.append((exp.problems[0].prompt, exp.extras["replay"]["replay/with_replacement"]))
        if exp.problems[0].prompt == "p1":
            assert len(set(exp.rollout.completion_ids[:, 0].tolist())) == 4
    assert {c for p, c in counts if p == "p0"} == {1} and {c for p, c in counts if p == "p1"} == {0}
    assert buf.counts["with_replacement"] == sum(c for _, c in counts) > 0


def test_checkpoint_round_trip_gives_the_same_future_draws():
    def fill(buf):
        buf.add(_exp([(k, [t, k], float((t + k) % 3), 0) for k in range(5) for t in range(4)]))
        buf.mark_sync()
        buf.add(_exp([(k, [t, k, 1], float(t % 2), 1) for k in (1, 2) for t in range(6)]))

    a = _buffer(on_policy_prob=0.5, inv_temp=1.0, capacity=8, seed=3)
    fill(a)
    for _ in range(3):
        a.sample(3, 4)
    f = io.BytesIO()
    torch.save(a.state_dict(), f)
    b = _buffer(on_policy_prob=0.5, inv_temp=1.0, capacity=8, seed=999)  # another seed: state must restore it
    b.load_state_dict(torch.load(io.BytesIO(f.getvalue()), weights_only=False))

    def draws(buf):
        out = []
        for i in range(6):
            if i == 3:
                buf.mark_sync()
                buf.add(_exp([(7, [5, 5], 1.0, 2), (7, [6], 0.0, 2)]))
            e = buf.sample(3, 4)
            out.append((e.rollout.completion_ids.tolist(), [p.prompt for p in e.problems], e.rewards.tolist(),
                        e.rollout.versions.tolist()))
        return out

    assert draws(a) == draws(b)
    fresh = _buffer(on_policy_prob=0.5, inv_temp=1.0, capacity=8, seed=3)
    fill(fresh)
    assert draws(fresh) != draws(_restored(a))  # not trivially equal: the draws depend on the state


def _restored(buf):
    other = _buffer(on_policy_prob=buf.m, inv_temp=buf.inv_temp, capacity=buf.capacity)
    other.load_state_dict(buf.state_dict())
    return other


# ------------------------------------------------------------------ TRL's GRPO-with-replay

def test_variance_replay_replaces_zero_variance_groups_with_kept_ones():
    rp = VarianceReplay(PROBLEMS, capacity=2, pad_id=0, seed=0)
    first = rp.apply(_exp([(0, [1], 1.0, 0), (0, [2], 0.0, 0), (1, [1], 1.0, 0), (1, [2], 1.0, 0)]))
    # group p0 varies: kept; p1 is all-correct: replaced by the only kept group (p0)
    assert [p.prompt for p in first.problems] == ["p0", "p0", "p0", "p0"]
    assert first.extras["replay"]["replay/replaced_groups"] == 1
    assert first.group.tolist() == [0, 0, 1, 1]
    second = rp.apply(_exp([(2, [1], 0.0, 1), (2, [2], 0.0, 1), (3, [1], 0.0, 1), (3, [3], 3.0, 1)]))
    assert [p.prompt for p in second.problems][2:] == ["p3", "p3"]  # a varying fresh group stays
    assert second.problems[0].prompt in ("p0", "p3") and len(rp.groups) == 2
    state = rp.state_dict()
    rp2 = VarianceReplay(PROBLEMS, capacity=2, pad_id=0, seed=5)
    rp2.load_state_dict(state)
    batch = _exp([(4, [1], 0.0, 2), (4, [2], 0.0, 2)])
    assert rp.apply(batch).problems[0].prompt == rp2.apply(_exp([(4, [1], 0.0, 2), (4, [2], 0.0, 2)])).problems[0].prompt


# ------------------------------------------------------------------ trajectory balance and beta

def test_tb_loss_is_the_within_prompt_variance_of_the_residual_on_a_hand_example():
    # two prompts: rows 0-2 (K = 3) and rows 3-4 (K = 2); two tokens each, the second masked for row 4
    lp = torch.tensor([[-1.0, -0.5], [-2.0, -0.1], [-0.3, -0.3], [-1.2, -0.8], [-0.7, -9.0]])
    ref = torch.tensor([[-0.8, -0.6], [-1.5, -0.2], [-0.4, -0.1], [-1.0, -1.0], [-0.9, -9.0]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 1], [1, 0]], dtype=torch.float32)
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    group = torch.tensor([0, 0, 0, 1, 1])
    beta = 0.5
    loss, _ = A.policy_loss("tb", logp=lp, old_logp=lp, advantages=torch.zeros_like(lp), mask=mask,
                            ref_logp=ref, rewards=r, group=group, beta=beta)
    # by hand: res = sum(lp) - sum(ref) - r / beta
    res = [(-1.5) - (-1.4) - 2.0, (-2.1) - (-1.7) - 0.0, (-0.6) - (-0.5) - 2.0, (-2.0) - (-2.0) - 0.0,
           (-0.7) - (-0.9) - 2.0]
    g0, g1 = res[:3], res[3:]
    var = lambda xs: sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / len(xs)  # noqa: E731
    expected = (3 * var(g0) + 2 * var(g1)) / 5  # mean over responses of the within-prompt deviation
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx((1.92667 + 1.62) / 5, abs=1e-4)  # worked by hand: 0.7093
    # K = 1: identically 0
    loss1, _ = A.policy_loss("tb", logp=lp[:1], old_logp=lp[:1], advantages=torch.zeros_like(lp[:1]),
                             mask=mask[:1], ref_logp=ref[:1], rewards=r[:1], group=group[:1], beta=beta)
    assert loss1.item() == 0.0


def test_beta_schedule_is_linear_then_constant():
    cfg = load_config(None, ["algorithm.policy_loss=tb",
                             "algorithm.policy_loss_schedule={beta: {start: 0.012, end: 0.004, steps: 500}}"])
    sched = cfg.algorithm.policy_loss_schedule["beta"]
    assert linear_value(sched, 0) == 0.012
    assert linear_value(sched, 250) == pytest.approx(0.008)
    assert linear_value(sched, 500) == pytest.approx(0.004) and linear_value(sched, 10_000) == pytest.approx(0.004)
    params, metrics = scheduled_loss_params(cfg.algorithm, 125)
    assert params["beta"] == pytest.approx(0.010) and metrics == {"schedule/beta": params["beta"]}
    with pytest.raises(ConfigError, match="algorithm.policy_loss_schedule.clip_ratio_low is not a numeric"):
        load_config(None, ["algorithm.policy_loss=tb",
                           "algorithm.policy_loss_schedule={clip_ratio_low: {start: 1, end: 2, steps: 3}}"])
    with pytest.raises(ConfigError, match="both set"):
        load_config(None, ["algorithm.policy_loss=tb", "algorithm.policy_loss_params={beta: 0.1}",
                           "algorithm.policy_loss_schedule={beta: {start: 1, end: 2, steps: 3}}"])


# ------------------------------------------------------------------ config

def test_config_refuses_k1_with_tb_and_unsafe_losses_with_replay():
    with pytest.raises(ConfigError, match="rollout.group_size = 1") as err:
        load_config(None, ["algorithm.policy_loss=tb", "rollout.group_size=1"])
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(ConfigError, match="replay.enabled trains on off-policy samples") as err:
        load_config(None, ["replay.enabled=true", "algorithm.policy_loss=gpg"])
    assert len(str(err.value).splitlines()) == 1
    assert load_config(None, ["replay.enabled=true", "algorithm.policy_loss=gpg",
                              "algorithm.mismatch.method=tis"]).replay.enabled
    assert load_config(None, ["replay.enabled=true"]).algorithm.mismatch.method == "decoupled"  # vanilla
    assert load_config(None, ["replay.enabled=true", "algorithm.policy_loss=tb"]).algorithm.mismatch.method == "none"
    assert load_config(None, []).algorithm.mismatch.method == "none"
    with pytest.raises(ConfigError, match="replay.inv_temp"):
        load_config(None, ["replay.enabled=true", "replay.priority=recency"])
    with pytest.raises(ConfigError, match="greedy_baseline"):
        load_config(None, ["replay.enabled=true", "rollout.greedy_baseline=true",
                           "algorithm.advantage_estimator=remax"])


# ------------------------------------------------------------------ end to end

def _records(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@register_task("test_replay_digits")
def _digits_task(**options):
    """Arithmetic prompts; reward = share of digits in the completion (varies even for a random model)."""
    task = make_task("arithmetic", **options)

    def score(problem, text):
        r = sum(c.isdigit() for c in text) / max(1, len(text))
        return {"reward": r, "correct": float(r > 0.5)}

    task.score = score
    return task


TBA = ["task.name=test_replay_digits", "model.warm_start=false", "algorithm.policy_loss=tb", "algorithm.advantage_estimator=grpo",
       "algorithm.policy_loss_schedule={beta: {start: 0.5, end: 0.1, steps: 2}}", "replay.enabled=true",
       "replay.initial_buffer_samples=24", "replay.on_policy_prob=0.5"]


@pytest.mark.slow
def test_tba_three_steps_in_place_and_resume_continues_the_buffer(fast_config):
    from rlvr.train.loop import train

    cfg = fast_config(*TBA, "trainer.steps=3", "logging.checkpoint_every=2", "run.name=tba")
    assert train(cfg, stop_after=2, log=lambda *_: None) is None
    run_dir = Path(cfg.run.output_dir) / "tba"
    state = torch.load(run_dir / "checkpoints" / "step_000002" / "trainer_state.pt", weights_only=False)
    replay = state["source"]["replay"]
    assert replay["policy"] == "tba" and replay["counts"]["added"] >= 24 and replay["items"]["length"].numel() > 0
    train(resume=run_dir, log=lambda *_: None)
    steps = [r for r in _records(run_dir) if "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [r["schedule/beta"] for r in steps] == pytest.approx([0.5, 0.3, 0.1])
    assert steps[0]["replay/batches_in"] == 2  # 24 responses = 2 batches of 4 x 4 before step 1
    assert all(r["replay/items"] > 0 and "replay/on_policy_frac" in r for r in steps)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps) and any(r["loss"] > 0 for r in steps)
    # the resumed run makes the same draws as an uninterrupted one (buffer + generator restored)
    whole = train(fast_config(*TBA, "trainer.steps=3", "run.name=tba_whole"), log=lambda *_: None)
    ref = [r for r in _records(whole.run_dir) if "reward_mean" in r]
    for key in ("reward_mean", "replay/on_policy_frac", "replay/items", "loss"):
        assert [r[key] for r in steps] == [r[key] for r in ref], key


@pytest.mark.slow
def test_tba_three_steps_with_a_rollout_thread(fast_config):
    from rlvr.train.loop import train

    threads = torch.get_num_threads()
    # 64 responses = 4 batches: twice the admission window (S + 1 = 2 batches), opened during the fill
    cfg = fast_config(*TBA, "replay.initial_buffer_samples=64", "trainer.steps=3", "run.name=tba_async",
                      "runtime.mode=async",
                      "runtime.max_staleness=1", "runtime.sync_every=2", f"runtime.learner_threads={threads}",
                      f"runtime.worker_threads={threads}")
    result = train(cfg, log=lambda *_: None)
    steps = [r for r in _records(result.run_dir) if "reward_mean" in r]
    assert len(steps) == 3 and steps[0]["replay/batches_in"] >= 4
    assert max(r["staleness_max"] for r in steps) <= 3
    synced = [r for r in steps if "sync/bytes" in r]
    assert len(synced) <= 2  # weights published every 2 learner steps


@pytest.mark.slow
def test_grpo_with_variance_replay_three_steps(fast_config):
    from rlvr.train.loop import train

    cfg = fast_config("task.name=test_replay_digits", "model.warm_start=false", "replay.enabled=true",
                      "replay.policy=variance", "rollout.max_new_tokens=1",
                      "replay.capacity=8", "trainer.steps=3", "run.name=var")
    result = train(cfg, log=lambda *_: None)
    steps = [r for r in _records(result.run_dir) if "reward_mean" in r]
    assert len(steps) == 3 and all("replay/replaced_groups" in r for r in steps)
    assert sum(r["replay/replaced_groups"] for r in steps) > 0  # one-token answers: some groups are constant
    assert load_config(Path(result.run_dir) / "config.yaml").algorithm.mismatch.method == "decoupled"
