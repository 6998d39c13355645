"""RSA, majority voting and best-of-N bookkeeping with a stub engine: population sizes, subsets
drawn without replacement, token accounting, and accuracies on designed outputs."""

import random
from collections import Counter

import pytest
import torch

from eval_stubs import StubEngine, StubTask, candidates_of
from rlvr.eval.tts import RSA, BestOfN, MajorityVote, rsa_subsets, run_strategies
from rlvr.rollout.base import SamplingParams

SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=8)


def test_rsa_subsets_are_without_replacement_and_cover_uniformly():
    rng = random.Random(0)
    subsets = [s for _ in range(2000) for s in rsa_subsets(6, 4, 3, rng)]
    assert all(len(s) == 3 and len(set(s)) == 3 and all(0 <= i < 6 for i in s) for s in subsets)
    counts = Counter(i for s in subsets for i in s)
    expected = len(subsets) * 3 / 6
    assert all(abs(c - expected) < 0.05 * expected for c in counts.values())  # every member equally likely
    assert len(rsa_subsets(6, 5, 2, rng)) == 5  # N subsets per step
    # fewer members than K: fall back to drawing with replacement (spec 17.4)
    small = rsa_subsets(2, 3, 4, rng)
    assert all(len(s) == 4 and set(s) <= {0, 1} for s in small)


def _unique_policy():
    """Plain prompts get a unique label; aggregation prompts get 'A' + the number of candidates."""
    counter = iter(range(10**6))

    def policy(prompt, draw):
        if prompt.endswith("=>"):
            return f"A{len(candidates_of(prompt))}"
        return f"s{next(counter)}"
    return policy


def test_rsa_population_stays_n_and_aggregates_distinct_members_of_the_previous_step():
    task, N, K, T = StubTask(3), 5, 3, 3
    engine = StubEngine(_unique_policy())
    rsa = RSA(N=N, K=K, T=T, seed=1)
    problems = task.problems("eval")
    run = rsa.evolve(engine, task, problems, SAMPLING)
    assert len(run.populations) == T + 1 and len(run.subsets) == T
    assert all(len(pop) == len(problems) and all(len(x) == N for x in pop) for pop in run.populations)
    # one engine call per step; every aggregation call asks for one completion of N prompts per problem
    assert len(engine.calls) == T + 1
    assert engine.calls[0][1].n == N and len(engine.calls[0][0]) == len(problems)
    for step in range(1, T + 1):
        prompts, params = engine.calls[step]
        assert params.n == 1 and len(prompts) == N * len(problems)
        for p in range(len(problems)):
            for j in range(N):
                subset = run.subsets[step - 1][p][j]
                assert len(subset) == K and len(set(subset)) == K  # without replacement
                shown = candidates_of(prompts[p * N + j])
                assert shown == [run.populations[step - 1][p][i] for i in subset]
                assert prompts[p * N + j].startswith(problems[p].prompt)


def test_rsa_token_accounting_is_cumulative_generated_tokens():
    task, N, K, T = StubTask(2), 4, 2, 3
    engine = StubEngine(lambda prompt, draw: "xx" if prompt.endswith("=>") else "yyyy")
    points = RSA(N=N, K=K, T=T).run(engine, task, task.problems("eval"), SAMPLING)
    assert [p.setting for p in points] == [f"N=4,K=2,T={t}" for t in range(T + 1)]
    # stub costs: len(text) + 1 (EOS) generated tokens; initial 5 per sample, aggregation 3
    assert [p.generated_tokens for p in points] == [N * 5 + t * N * 3 for t in range(T + 1)]
    # per problem x problems = everything the engine generated over all its calls
    assert points[-1].generated_tokens * 2 == engine.generated_tokens
    # prompt tokens: plain "q0=" is 3 chars + BOS; an aggregation prompt "q0=|yyyy|yyyy|=>" is 16 + 1
    assert points[1].prompt_tokens == pytest.approx(N * 4 + N * 17)


def test_rsa_reports_majority_mean_and_pass_at_n():
    task = StubTask(2)

    def policy(prompt, draw):  # initial population: 1 right in 4 for q0, none for q1
        if prompt.endswith("=>"):
            return Counter(candidates_of(prompt)).most_common(1)[0][0]  # aggregate = copy the majority
        return "0" if (prompt == "q0=" and draw < 0.25) else "9"

    torch.manual_seed(0)
    points = RSA(N=8, K=3, T=0).run(StubEngine(policy), task, task.problems("eval"), SAMPLING)
    p = points[0]
    assert p.pass_at_n == pytest.approx(0.5 if p.mean_accuracy > 0 else 0.0)
    assert 0.0 <= p.mean_accuracy <= 0.5 and p.accuracy == 0.0  # the majority is "9" for both


def test_majority_and_best_of_n_use_prefixes_of_one_sample_set():
    task = StubTask(2)
    outputs = {"q0=": ["7", "0", "0", "5"], "q1=": ["", "3", "1", "1"]}
    seen = Counter()

    def policy(prompt, draw):
        text = outputs[prompt][seen[prompt] % 4]
        seen[prompt] += 1
        return text

    engine = StubEngine(policy)
    points = run_strategies([MajorityVote([1, 2, 4]), BestOfN([1, 2, 4])], engine, task,
                            task.problems("eval"), SAMPLING)
    assert len(engine.calls) == 1 and engine.calls[0][1].n == 4  # one shared sampling pass
    maj = {p.setting: p for p in points if p.strategy == "majority"}
    bon = {p.setting: p for p in points if p.strategy.startswith("best_of_n")}
    # q0: "7" | "7","0" (tie -> first, wrong) | "0" x2 wins (right);  q1: no answer | "3" | "1" x2 wins (right)
    assert [maj[f"N={n}"].accuracy for n in (1, 2, 4)] == [0.0, 0.0, 1.0]
    # q0 right from the 2nd sample on; q1 right from the 3rd
    assert [bon[f"N={n}"].accuracy for n in (1, 2, 4)] == [0.0, 0.5, 1.0]
    # tokens: len + 1 per sample, summed over the prefix, averaged over problems
    assert [maj[f"N={n}"].generated_tokens for n in (1, 2, 4)] == [1.5, 3.5, 7.5]
    assert "oracle" in next(iter(bon.values())).strategy


def test_rsa_validates_its_parameters():
    with pytest.raises(ValueError):
        RSA(N=0)
    with pytest.raises(ValueError):
        RSA(T=-1)
