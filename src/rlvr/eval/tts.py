"""Test-time scaling strategies behind one interface, with compute accounting.

Every strategy turns held-out problems into one final answer per problem and reports, for each
budget level it was asked for, a :class:`TTSPoint`: the accuracy of those answers and the compute
spent, counted as **generated tokens** (completion tokens the engine produced, EOS included;
``Rollout.completion_mask``), per problem. Prompt tokens (the aggregation prompts of RSA are long)
are recorded too but are not the x axis.

* :class:`BestOfN` -- sample N, answer right if *any* sample passes the verifier. It uses the
  reference answer, so it is an **oracle upper bound**, not a deployable method.
* :class:`MajorityVote` -- sample N, answer with the majority vote over extracted answers
  (self-consistency; tie rules in :mod:`rlvr.eval.metrics`).
* :class:`RSA` -- Recursive Self-Aggregation (Venkatraman et al. 2025, arXiv 2509.26626; spec
  section 17.2): a population of N completions; at each of T aggregation steps every member is
  replaced by the model's completion of the task's aggregation prompt over K members drawn
  **without replacement** from the current population (independently for each of the N new
  members, so subsets may overlap; with replacement only if the population is smaller than K,
  spec 17.4). The population size stays N. ``T`` here counts aggregation steps: T = 0 is the
  initial population alone, and the authors' ``--loops`` equals T + 1. The final answer is the
  majority vote over the final population (``accuracy``); the population's mean accuracy and
  pass@N are reported alongside, as in the paper.

Majority voting and best-of-N are evaluated on prefixes of one set of ``max(N)`` i.i.d. samples
(a prefix of i.i.d. samples is an i.i.d. sample), and RSA reports every step of one run, so one
call yields a whole accuracy-against-compute curve.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

import torch

from rlvr.eval.metrics import majority_vote, mean_over_problems
from rlvr.rollout.base import SamplingParams
from rlvr.tasks.base import Problem, aggregation_prompt

__all__ = ["BestOfN", "MajorityVote", "RSA", "RSARun", "Samples", "Strategy", "TTSPoint", "rsa_subsets",
           "run_strategies", "sample_independent"]


@dataclass(frozen=True)
class TTSPoint:
    """One (strategy, budget) result. Token counts are means per problem."""

    strategy: str
    setting: str
    accuracy: float
    generated_tokens: float
    prompt_tokens: float
    mean_accuracy: float | None = None
    pass_at_n: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Samples:
    """Completions per problem: ``texts[p][i]``, with generated and prompt token counts alike."""

    texts: list[list[str]]
    generated: list[list[int]]
    prompt: list[list[int]]


class Strategy(Protocol):
    """A test-time scaling strategy: problems in, one point per budget level out."""

    name: str

    def run(self, engine, task, problems: list[Problem], sampling: SamplingParams) -> list[TTSPoint]: ...


def sample_independent(engine, prompts: Sequence[str], n: int, sampling: SamplingParams) -> Samples:
    """``n`` i.i.d. completions of each prompt in one batched call, grouped by prompt."""
    rollout = engine.generate(list(prompts), SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                                            max_new_tokens=sampling.max_new_tokens, n=n))
    out = Samples([[] for _ in prompts], [[] for _ in prompts], [[] for _ in prompts])
    generated = rollout.completion_mask.sum(-1).tolist()
    prompt = rollout.prompt_mask.sum(-1).tolist()
    for row, p in enumerate(rollout.prompt_index.tolist()):
        out.texts[p].append(rollout.texts[row])
        out.generated[p].append(int(generated[row]))
        out.prompt[p].append(int(prompt[row]))
    return out


def _correct(task, problem: Problem, text: str) -> bool:
    return task.score(problem, text)["correct"] > 0


def _vote(task, problem: Problem, texts: Sequence[str]) -> bool:
    """Whether the majority answer of ``texts`` is right (no answer at all: wrong)."""
    winner = majority_vote([task.extract_answer(t) for t in texts])
    return winner is not None and _correct(task, problem, texts[winner])


@dataclass
class _PrefixStrategy:
    """Shared by majority voting and best-of-N: score prefixes of one set of i.i.d. samples."""

    ns: Sequence[int]
    name: str = ""

    def run(self, engine, task, problems: list[Problem], sampling: SamplingParams) -> list[TTSPoint]:
        return self.score(task, problems, sample_independent(engine, [p.prompt for p in problems],
                                                             max(self.ns), sampling))

    def score(self, task, problems: list[Problem], samples: Samples) -> list[TTSPoint]:
        points = []
        for n in sorted(self.ns):
            right = [self.decide(task, p, samples.texts[i][:n]) for i, p in enumerate(problems)]
            points.append(TTSPoint(
                strategy=self.name, setting=f"N={n}", accuracy=mean_over_problems([float(r) for r in right]),
                generated_tokens=mean_over_problems([float(sum(g[:n])) for g in samples.generated]),
                prompt_tokens=mean_over_problems([float(sum(t[:n])) for t in samples.prompt])))
        return points

    def decide(self, task, problem: Problem, texts: Sequence[str]) -> bool:
        raise NotImplementedError


@dataclass
class BestOfN(_PrefixStrategy):
    """Best-of-N with the task's verifier: right if any of N samples is right (oracle upper bound)."""

    name: str = "best_of_n (oracle)"

    def decide(self, task, problem: Problem, texts: Sequence[str]) -> bool:
        return any(_correct(task, problem, t) for t in texts)


@dataclass
class MajorityVote(_PrefixStrategy):
    """Self-consistency: the majority answer of N samples (Wang et al. 2023; tie rules in metrics)."""

    name: str = "majority"

    def decide(self, task, problem: Problem, texts: Sequence[str]) -> bool:
        return _vote(task, problem, texts)


def rsa_subsets(population_size: int, N: int, K: int, rng: random.Random) -> list[list[int]]:
    """N index subsets of size K for one RSA step (spec 17.2).

    Each subset holds K distinct members (without replacement) of a population of
    ``population_size``; the N subsets are drawn independently. If the population is smaller
    than K the subset is drawn with replacement (spec 17.4).
    """
    if population_size < 1 or K < 1:
        raise ValueError(f"rsa_subsets needs population_size >= 1 and K >= 1, got {population_size}, {K}")
    if population_size >= K:
        return [rng.sample(range(population_size), K) for _ in range(N)]
    return [[rng.randrange(population_size) for _ in range(K)] for _ in range(N)]


@dataclass
class RSARun:
    """Everything one RSA run produced, step by step (step 0 = the initial population).

    ``populations[t][p]`` are problem p's N completions after step t; ``subsets[t-1][p]`` the K
    indices into ``populations[t-1][p]`` each new member aggregated; ``generated[t]`` and
    ``prompt[t]`` the tokens spent in step t, per problem.
    """

    populations: list[list[list[str]]] = field(default_factory=list)
    subsets: list[list[list[list[int]]]] = field(default_factory=list)
    generated: list[list[int]] = field(default_factory=list)
    prompt: list[list[int]] = field(default_factory=list)


@dataclass
class RSA:
    """Recursive Self-Aggregation with population ``N``, subset size ``K`` and ``T`` aggregation steps.

    ``report`` lists the step counts (0..T) to report; by default every step.
    """

    N: int = 8
    K: int = 3
    T: int = 4
    report: Sequence[int] | None = None
    seed: int = 0
    name: str = "rsa"

    def __post_init__(self) -> None:
        if self.N < 1 or self.K < 1 or self.T < 0:
            raise ValueError(f"RSA needs N >= 1, K >= 1, T >= 0; got N={self.N}, K={self.K}, T={self.T}")

    def run(self, engine, task, problems: list[Problem], sampling: SamplingParams) -> list[TTSPoint]:
        return self.points(task, problems, self.evolve(engine, task, problems, sampling))

    def evolve(self, engine, task, problems: list[Problem], sampling: SamplingParams) -> RSARun:
        """Run the T steps; the population size is N after every step."""
        rng = random.Random(self.seed)
        first = sample_independent(engine, [p.prompt for p in problems], self.N, sampling)
        run = RSARun(populations=[first.texts], generated=[[sum(g) for g in first.generated]],
                     prompt=[[sum(t) for t in first.prompt]])
        for _ in range(self.T):
            population = run.populations[-1]
            subsets = [rsa_subsets(len(population[p]), self.N, self.K, rng) for p in range(len(problems))]
            prompts = [aggregation_prompt(task, problem, [population[p][i] for i in s])
                       for p, problem in enumerate(problems) for s in subsets[p]]
            step = sample_independent(engine, prompts, 1, sampling)
            run.subsets.append(subsets)
            run.populations.append([[step.texts[p * self.N + j][0] for j in range(self.N)]
                                    for p in range(len(problems))])
            run.generated.append([sum(step.generated[p * self.N + j][0] for j in range(self.N))
                                  for p in range(len(problems))])
            run.prompt.append([sum(step.prompt[p * self.N + j][0] for j in range(self.N))
                               for p in range(len(problems))])
        return run

    def points(self, task, problems: list[Problem], run: RSARun) -> list[TTSPoint]:
        """One point per reported step: majority-vote accuracy, population mean, pass@N, cumulative tokens."""
        report = range(len(run.populations)) if self.report is None else self.report
        points = []
        for t in report:
            pop = run.populations[t]
            right = [[_correct(task, p, x) for x in pop[i]] for i, p in enumerate(problems)]
            points.append(TTSPoint(
                strategy=self.name, setting=f"N={self.N},K={self.K},T={t}",
                accuracy=mean_over_problems([float(_vote(task, p, pop[i])) for i, p in enumerate(problems)]),
                generated_tokens=mean_over_problems([float(sum(run.generated[s][i] for s in range(t + 1)))
                                                     for i in range(len(problems))]),
                prompt_tokens=mean_over_problems([float(sum(run.prompt[s][i] for s in range(t + 1)))
                                                  for i in range(len(problems))]),
                mean_accuracy=mean_over_problems([sum(r) / len(r) for r in right]),
                pass_at_n=mean_over_problems([float(any(r)) for r in right])))
        return points


def run_strategies(strategies: Sequence[Strategy], engine, task, problems: list[Problem],
                   sampling: SamplingParams, seed: int = 0) -> list[TTSPoint]:
    """Run each strategy under a seeded RNG (the caller's RNG is left untouched).

    Majority voting and best-of-N share one set of i.i.d. samples (the largest N either needs),
    so asking for both costs one sampling pass.
    """
    prefix = [s for s in strategies if isinstance(s, _PrefixStrategy)]
    points: list[TTSPoint] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if prefix:
            n = max(max(s.ns) for s in prefix)
            samples = sample_independent(engine, [p.prompt for p in problems], n, sampling)
            for s in prefix:
                points += s.score(task, problems, samples)
        for s in strategies:
            if not isinstance(s, _PrefixStrategy):
                points += s.run(engine, task, problems, sampling)
    return points
