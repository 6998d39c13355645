"""Aggregation-aware RL (RSA, arXiv 2509.26626): the producer mixes aggregation prompts built from
the policy's own completions of the same step; the warm start mixes aggregation examples."""

import random

import pytest

from eval_stubs import StubEngine, StubTask, candidates_of
from rlvr.config import ConfigError, load_config
from rlvr.rollout.base import SamplingParams
from rlvr.experience.batch import PromptSampler
from rlvr.experience.producer import AggregationPlan, PromptDraws, RolloutProducer, aggregation_count


def _producer(ratio, k=2, prompts_per_step=4, G=3):
    counter = iter(range(10**6))

    def policy(prompt, draw):  # unique plain completions; aggregation completions say how many they saw
        return f"A{len(candidates_of(prompt))}" if prompt.endswith("=>") else f"c{next(counter)}"

    task = StubTask(20)
    engine = StubEngine(policy)
    sampler = PromptSampler(task.problems("train"), seed=0)
    plan = AggregationPlan(ratio, k) if ratio > 0 else None
    producer = RolloutProducer(engine, task, SamplingParams(n=G), prompts_per_step, plan=plan)
    producer.draws = lambda: PromptDraws(sampler.problems, sampler.next_indices)
    return producer, engine, sampler


def test_aggregation_groups_are_built_from_the_same_steps_candidates():
    producer, engine, sampler = _producer(ratio=0.5, k=2, prompts_per_step=4, G=3)
    exp = producer.produce(producer.draws())
    assert sampler.position == 2  # only the plain prompts come from the sampler
    assert exp.rewards.shape[0] == 4 * 3 and exp.group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert exp.rollout.prompt_index.tolist() == exp.group.tolist()
    assert exp.extras["aggregation"].tolist() == [False] * 6 + [True] * 6
    plain_prompts, agg_prompts = engine.calls[0][0], engine.calls[1][0]
    assert len(plain_prompts) == 2 and len(agg_prompts) == 2
    for j, prompt in enumerate(agg_prompts):
        source = j % 2  # aggregation group j reuses plain group j mod n_plain
        own = exp.rollout.texts[source * 3:(source + 1) * 3]
        shown = candidates_of(prompt)
        assert len(shown) == 2 and len(set(shown)) == 2 and set(shown) <= set(own)  # K, without replacement
        assert prompt.startswith(plain_prompts[source])
        rows = [i for i, g in enumerate(exp.group.tolist()) if g == 2 + j]
        assert all(exp.problems[i].answer == exp.problems[source * 3].answer for i in rows)  # same verifier
        assert all(exp.problems[i].prompt == prompt for i in rows)
        assert all(exp.rollout.texts[i] == "A2" for i in rows)


def test_no_aggregation_by_default_and_counts():
    producer, engine, sampler = _producer(ratio=0.0)
    exp = producer.produce(producer.draws())
    assert len(engine.calls) == 1 and sampler.position == 4 and "aggregation" not in exp.extras
    assert [aggregation_count(16, r) for r in (0.0, 0.25, 0.5, 0.99)] == [0, 4, 8, 15]


def test_aggregation_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="rollout.aggregation_k"):
        load_config(None, ["rollout.aggregation_ratio=0.5", "rollout.aggregation_k=9", "rollout.group_size=8"])
    with pytest.raises(ConfigError, match="rollout.aggregation_ratio"):
        load_config(None, ["rollout.aggregation_ratio=1.0"])
    with pytest.raises(ConfigError, match="rollout.aggregation_ratio"):
        load_config(None, ["rollout.aggregation_ratio=0.9", "rollout.prompts_per_step=2"])
    with pytest.raises(ConfigError, match="sft.aggregation_ratio"):
        load_config(None, ["sft.aggregation_ratio=1.5"])
    cfg = load_config("configs/rsa_arithmetic_chain_tiny.yaml")
    assert cfg.rollout.aggregation_ratio > 0 and cfg.task.name == "arithmetic_chain"


def test_warm_start_mixes_aggregation_examples_and_keeps_old_cache_keys():
    from rlvr.tasks import make_task
    from rlvr.warmstart.sft import sft_batch, sft_key_fields

    task = make_task("arithmetic_chain", num_train=50, num_eval=10)
    batch = task.problems("train", 40)
    rows, targets = sft_batch(task, batch, 0.0, 3, random.Random(0))
    assert rows == batch and targets == [task.format_sft_target(p) for p in batch]
    rows, targets = sft_batch(task, batch, 0.5, 3, random.Random(0))
    agg = [(r, t) for r, t in zip(rows, targets) if r.prompt.endswith("=>")]
    assert 5 < len(agg) < 35
    for r, t in agg:
        assert 1 <= len(r.prompt.split("|")) - 2 <= 3  # 1..K candidates
        assert task.score(r, t)["chain"] == 1.0  # the target is the right chain for the original problem
    # a config without the option keys the cache exactly as before the option existed
    assert set(sft_key_fields(load_config(None).sft)) == {"steps", "lr", "batch_size", "warmup_steps", "seed"}
    on = load_config(None, ["sft.aggregation_ratio=0.3"]).sft
    assert sft_key_fields(on)["aggregation_ratio"] == 0.3 and "aggregation_k" in sft_key_fields(on)


def test_chain_verifier_reads_the_original_problem_behind_an_aggregation_prompt():
    from rlvr.tasks import make_task
    from rlvr.tasks.base import Problem

    task = make_task("arithmetic_chain")
    p = task.problems("train", 1)[0]
    agg = Problem(task.aggregation_prompt(p, ["1", "2"]), p.answer, meta=p.meta)
    assert task.score(agg, task.format_sft_target(p))["chain"] == 1.0
