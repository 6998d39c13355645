"""The rollout producer: prompts -> engine -> verifier -> reward transforms, one Experience per batch.

It is built from small parts, each chosen by config, instead of one flag per technique::

    RolloutProducer(engine, task, params, prompts_per_step,
                    plan=PlainPlan() | AggregationPlan(ratio, K),      # which rows a batch holds
                    selection=OneRound() | DynamicSampling(metric, N),  # which groups are kept
                    transforms=[OverlongPenalty(...)],                  # reward shaping after the verifier
                    augments=[GreedyBaseline()])                        # extra per-row data (ReMax)
    experience = producer.produce(prompts, seed)

``prompts`` is a :class:`PromptDraws`: the prompts one batch takes from the run's single
:class:`~rlvr.experience.batch.PromptSampler`, recorded so that a batch that was in flight at a
checkpoint is regenerated from the very same prompts on resume. ``seed`` seeds every sampling call
of the batch (one stream per batch), so a batch is the same whichever thread, process or Ray actor
makes it: asynchronous training with staleness 0 reproduces synchronous training exactly.

:func:`build_producer` reads the config; a new technique adds a part (and one line there).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Protocol

import torch

from rlvr.experience.batch import (Experience, concat_experience, keep_informative_groups, overlong_penalty,
                                   truncate_groups)
from rlvr.rollout.base import RolloutEngine, SamplingParams
from rlvr.rewards.components import RewardPipeline, build_component
from rlvr.tasks.base import score


def batch_seed(run_seed: int, index: int) -> int:
    """The sampling seed of batch ``index`` of a run (the same in sync and async mode)."""
    return (run_seed * 1_000_003 + 7_919 * index + 12_345) % (2**62)


class PromptDraws:
    """The prompts one batch draws: ``next(n)`` problems, taken from ``draw(n) -> indices``.

    ``replay`` holds the index lists an earlier attempt of the same batch drew (a checkpoint taken
    while it was in flight); they are served first, so a regenerated batch sees the same prompts.
    ``drawn`` records every list served.
    """

    def __init__(self, problems: list, draw: Callable[[int], list[int]], replay: list[list[int]] | None = None):
        self.problems, self.draw = problems, draw
        self.replay = [list(r) for r in (replay or [])]
        self.drawn: list[list[int]] = []

    def next(self, n: int) -> list:
        if self.replay and len(self.replay[0]) == n:
            idx = self.replay.pop(0)
        else:
            self.replay = []  # a different shape from here on: draw afresh
            idx = list(self.draw(n))
        self.drawn.append(idx)
        return [self.problems[i] for i in idx]


# ------------------------------------------------------------------------------------------------
# parts

class RewardTransform(Protocol):
    """Shapes the rewards of a scored batch: adds components and returns the new scalar reward."""

    def __call__(self, rewards: torch.Tensor, components: dict[str, torch.Tensor], rollout) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True)
class OverlongPenalty:
    """DAPO soft overlong punishment (arXiv 2503.14476, eq. 13): see :func:`overlong_penalty`."""

    max_len: int
    buffer_len: int
    factor: float = 1.0

    def __call__(self, rewards, components, rollout):
        penalty = overlong_penalty(rollout.completion_mask.sum(-1), self.max_len, self.buffer_len, self.factor)
        components["overlong_penalty"] = penalty
        return rewards + penalty


@dataclasses.dataclass(frozen=True)
class CombineRewards:
    """Multi-objective reward: the named components weighted and combined by a key of
    ``rlvr.algorithms.REWARD_COMBINERS`` (sum_then_normalize, normalize_then_sum/GDPO, dvao, tmn, pow3r)
    within each generation call's groups. The effective weight of each component per row is added to
    the components as ``weight/<name>`` (logged as ``reward/weight/<name>``). A combiner whose signature
    names ``step`` (trust_grpo's annealing) gets the policy version that generated the rollout."""

    combine: str
    weights: dict
    params: dict = dataclasses.field(default_factory=dict)

    def __call__(self, rewards, components, rollout):
        import inspect

        from rlvr.algorithms import REWARD_COMBINERS, combine_rewards

        params = dict(self.params)
        if "step" in inspect.signature(REWARD_COMBINERS[self.combine]).parameters and "step" not in params:
            params["step"] = int(rollout.policy_version)  # annealed combiners (trust_grpo): the batch's policy
        combined, effective = combine_rewards(self.combine, components, self.weights, rollout.prompt_index,
                                              **params)
        for name, w in effective.items():
            components[f"weight/{name}"] = w.to(torch.float32)
        return combined.to(torch.float32)


class GreedyBaseline:
    """ReMax (Li et al. 2023, arXiv 2310.10505): one greedy completion per prompt, scored; its reward
    is each row's ``baseline_rewards``."""

    def __call__(self, producer: "RolloutProducer", problems: list, exp: Experience) -> None:
        t0 = time.perf_counter()
        greedy = producer.engine.generate([p.prompt for p in problems], SamplingParams(
            temperature=0, max_new_tokens=producer.params.max_new_tokens))
        t1 = time.perf_counter()
        exp.extras["baseline_rewards"] = score(producer.task, problems, greedy.texts)["reward"][exp.rollout.prompt_index]
        exp.timings["generate"] += t1 - t0
        exp.timings["score"] += time.perf_counter() - t1


class PlainPlan:
    """Every row of the batch answers a prompt of the task."""

    def make(self, producer: "RolloutProducer", prompts: PromptDraws, n_prompts: int, seeds) -> Experience:
        return producer.generate_and_score(prompts.next(n_prompts), next(seeds))


@dataclasses.dataclass(frozen=True)
class AggregationPlan:
    """Aggregation-aware RL (RSA, Venkatraman et al. 2025, arXiv 2509.26626, spec section 17).

    ``round(ratio * n)`` groups of the batch are aggregation prompts over K of the policy's own
    candidates of this batch: aggregation group j reuses plain group ``j mod n_plain``; its prompt
    is the task's aggregation prompt over K completions drawn without replacement from that group,
    its answer and verifier the original problem's. The draw is seeded by the batch's seed.
    """

    ratio: float
    k: int

    def make(self, producer, prompts, n_prompts, seeds) -> Experience:
        n_agg = aggregation_count(n_prompts, self.ratio)
        plain = producer.generate_and_score(prompts.next(n_prompts - n_agg), next(seeds))
        plain.extras["aggregation"] = torch.zeros_like(plain.group, dtype=torch.bool)
        if n_agg == 0:
            return plain
        agg = producer.generate_and_score(self.problems(producer.task, plain, n_agg, next(seeds)), next(seeds))
        agg.group = agg.group + (n_prompts - n_agg)
        agg.rollout.prompt_index = agg.rollout.prompt_index + (n_prompts - n_agg)
        agg.extras["aggregation"] = torch.ones_like(agg.group, dtype=torch.bool)
        out = concat_experience([plain, agg], producer.engine.tokenizer.pad_token_id)
        out.timings = {k: plain.timings[k] + agg.timings[k] for k in plain.timings}
        return out

    def problems(self, task, plain: Experience, n_agg: int, seed: int) -> list:
        from rlvr.tasks.base import Problem, aggregation_prompt

        g = torch.Generator().manual_seed(0 if seed is None else seed)
        groups = list(dict.fromkeys(plain.group.tolist()))
        out = []
        for j in range(n_agg):
            rows = torch.nonzero(plain.group == groups[j % len(groups)]).flatten().tolist()
            picked = [rows[i] for i in torch.randperm(len(rows), generator=g)[:self.k].tolist()]
            problem = plain.problems[rows[0]]
            prompt = aggregation_prompt(task, problem, [plain.rollout.texts[i] for i in picked])
            out.append(Problem(prompt=prompt, answer=problem.answer, meta={**problem.meta, "aggregation": True}))
        return out


def aggregation_count(n_prompts: int, ratio: float) -> int:
    """Groups of a step that are aggregation prompts: ``round(ratio * n_prompts)``, at most n - 1."""
    return min(n_prompts - 1, round(ratio * n_prompts))


class OneRound:
    """Keep every group of one generation round."""

    def collect(self, make: Callable[[int], Experience], n_prompts: int, pad_id: int) -> Experience:
        return make(n_prompts)


@dataclasses.dataclass(frozen=True)
class DynamicSampling:
    """DAPO dynamic sampling (Yu et al. 2025, arXiv 2503.14476, sec. 3.2): generate rounds until
    ``n_prompts`` groups whose ``metric`` is not constant are collected (at most ``max_rounds``;
    <= 0: unlimited), then keep the first ``n_prompts`` of them."""

    metric: str = "correct"
    max_rounds: int = 10

    def collect(self, make, n_prompts, pad_id) -> Experience:
        kept, rounds, t_gen, t_score, seen_groups = [], 0, 0.0, 0.0, 0
        while sum(len(torch.unique(e.group)) for e in kept) < n_prompts:
            if self.max_rounds > 0 and rounds >= self.max_rounds:
                raise ValueError(
                    f"dynamic sampling found only {sum(len(torch.unique(e.group)) for e in kept)} of "
                    f"{n_prompts} informative groups in {rounds} rounds (groups whose "
                    f"'{self.metric}' varies); raise rollout.dynamic_sampling.max_gen_batches or "
                    "rollout.group_size, or use an easier task")
            exp = make(n_prompts)
            rounds += 1
            t_gen += exp.timings["generate"]
            t_score += exp.timings["score"]
            exp = keep_informative_groups(exp, exp.reward_components[self.metric])
            exp.group = exp.group + seen_groups
            seen_groups += n_prompts
            kept.append(exp)
        out = truncate_groups(concat_experience(kept, pad_id), n_prompts)
        out.timings = {"generate": t_gen, "score": t_score}
        out.extras["gen_rounds"] = rounds
        return out


def pair_roles(rates: torch.Tensor, hard_max: float, easy_min: float) -> torch.Tensor:
    """Role of each prompt by its empirical success rate ("Beyond Variance", arXiv 2602.03452, spec 13):
    +1 hard-but-solvable (``0 < rate <= hard_max``), -1 easy-but-brittle (``easy_min <= rate < 1``;
    a rate in both bands counts as hard), 0 neither (unsolved, solved, or between the bands)."""
    hard = (rates > 0) & (rates <= hard_max)
    easy = (rates >= easy_min) & (rates < 1) & ~hard
    return hard.long() - easy.long()


@dataclasses.dataclass(frozen=True)
class PositiveNegativePairing:
    """Positive-negative prompt pairing ("Beyond Variance", arXiv 2602.03452, spec 13): generate rounds
    until ``n_prompts / 2`` hard-but-solvable and as many easy-but-brittle groups (:func:`pair_roles`
    on the group mean of ``metric``) are found; the batch holds them as pairs (hard, easy), in order
    of discovery. ``extras["pair"]`` is each row's pair index and ``extras["pair_role"]`` +1 / -1.
    The paper's pair-level re-weighting of the rewards was not found (spec 13) and is NOT applied:
    the groups are trained by the configured estimator as they are."""

    metric: str = "correct"
    hard_max: float = 0.5
    easy_min: float = 0.5
    max_rounds: int = 10

    def collect(self, make, n_prompts, pad_id) -> Experience:
        from rlvr.experience.batch import select_rows

        need = n_prompts // 2
        found = {1: [], -1: []}  # role -> list of single-group experiences
        rounds, t_gen, t_score = 0, 0.0, 0.0
        while len(found[1]) < need or len(found[-1]) < need:
            if self.max_rounds > 0 and rounds >= self.max_rounds:
                raise ValueError(
                    f"prompt pairing found {len(found[1])} hard and {len(found[-1])} easy of {need} groups each "
                    f"in {rounds} rounds; raise rollout.pairing.max_rounds or rollout.group_size, or widen "
                    "rollout.pairing.hard_max / easy_min")
            exp = make(n_prompts)
            rounds += 1
            t_gen += exp.timings["generate"]
            t_score += exp.timings["score"]
            metric = exp.reward_components[self.metric]
            for g in list(dict.fromkeys(exp.group.tolist())):
                rows = torch.nonzero(exp.group == g).flatten()
                role = int(pair_roles(metric[rows].float().mean().reshape(1), self.hard_max, self.easy_min)[0])
                if role != 0 and len(found[role]) < need:
                    found[role].append(select_rows(exp, rows))
        parts = []
        for i in range(need):
            for role in (1, -1):
                part = found[role][i]
                part.group = torch.full_like(part.group, 2 * i + (role == -1))
                part.extras["pair"] = torch.full_like(part.group, i)
                part.extras["pair_role"] = torch.full_like(part.group, role)
                parts.append(part)
        out = concat_experience(parts, pad_id)
        out.timings = {"generate": t_gen, "score": t_score}
        out.extras["gen_rounds"] = rounds
        return out


# ------------------------------------------------------------------------------------------------

class RolloutProducer:
    """Makes one :class:`Experience` of ``prompts_per_step`` groups per :meth:`produce` call."""

    def __init__(self, engine: RolloutEngine, task, params: SamplingParams, prompts_per_step: int,
                 plan=None, selection=None, transforms=(), augments=(), rewards: RewardPipeline | None = None,
                 episodes=None, env_verifier: bool = False):
        self.engine, self.task, self.params = engine, task, params
        self.episodes, self.env_verifier = episodes, env_verifier  # multi-turn (the env config section)
        self.rewards = rewards or RewardPipeline()  # reward components beside the verifier (RMs, judges, ...)
        self.prompts_per_step = prompts_per_step
        self.plan = plan or PlainPlan()
        self.selection = selection or OneRound()
        self.transforms, self.augments = list(transforms), list(augments)

    def produce(self, prompts: PromptDraws, seed: int | None = None) -> Experience:
        seeds = _seed_stream(seed)
        return self.selection.collect(lambda n: self.plan.make(self, prompts, n, seeds), self.prompts_per_step,
                                      self.engine.tokenizer.pad_token_id)

    def generate_and_score(self, problems: list, seed: int | None) -> Experience:
        t0 = time.perf_counter()
        params = dataclasses.replace(self.params, seed=seed)
        if self.episodes is not None:  # multi-turn: the policy and an environment take turns
            rollout = self.episodes.rollout(self.engine, self.task, problems, params)
        else:
            rollout = self.engine.generate([p.prompt for p in problems], params)
        t1 = time.perf_counter()
        rows = [problems[i] for i in rollout.prompt_index.tolist()]
        components = score(self.task, rows, rollout.texts)
        if self.episodes is not None:  # the episode's reward: its turn rewards summed (+ the verifier's)
            env_reward = torch.tensor([sum(r) for r in rollout.extras["turn_rewards"]], dtype=torch.float32)
            components["env_reward"] = env_reward
            components["reward"] = env_reward + (components["reward"] if self.env_verifier else 0.0)
            from rlvr.rollout.episodes import env_correct

            if (judged := env_correct(rollout)) is not None:  # the environment's judgement of each episode
                components["correct"] = judged
        extra, seconds = self.rewards(rows, rollout.texts, rollout.prompt_index)
        components.update(extra)
        if "reward_failed_group" in extra and bool(extra["reward_failed_group"].any()):  # reward.on_failure
            keep = (1.0 - extra["reward_failed_group"]).to(rollout.loss_mask.dtype)[:, None]
            rollout = dataclasses.replace(rollout, loss_mask=rollout.loss_mask * keep)  # drop_group: no loss
        rewards = components["reward"]
        for transform in self.transforms:
            rewards = transform(rewards, components, rollout)
        exp = Experience(rollout=rollout, rewards=rewards, reward_components=components,
                         group=rollout.prompt_index.clone(), problems=rows,
                         timings={"generate": t1 - t0, "score": time.perf_counter() - t1,
                                  **{f"reward/{k}": v for k, v in seconds.items()}})
        for augment in self.augments:
            augment(self, problems, exp)
        return exp


def _seed_stream(seed: int | None):
    """Seeds for the successive sampling calls of one batch (None: unseeded)."""
    i = 0
    while True:
        yield None if seed is None else (seed + 1_000_033 * i) % (2**62)
        i += 1


def build_producer(config, engine: RolloutEngine, task, policy_path: str | None = None) -> RolloutProducer:
    """The producer a config describes (the same in every runtime mode). ``policy_path``: the policy's starting
    checkpoint (a judge with ``path: policy`` loads it)."""
    r, rw = config.rollout, config.reward
    params = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens,
                            n=r.group_size, batch_invariant=config.run.deterministic,
                            return_support=config.trainer.logprob_support == "sampled")
    plan = AggregationPlan(r.aggregation_ratio, r.aggregation_k) if r.aggregation_ratio > 0 else PlainPlan()
    ds = r.dynamic_sampling
    selection = DynamicSampling(ds.metric, ds.max_gen_batches) if ds.enabled else OneRound()
    if r.pairing.enabled:
        pr = r.pairing
        selection = PositiveNegativePairing(pr.metric, pr.hard_max, pr.easy_min, pr.max_rounds)
    transforms = [OverlongPenalty(r.max_new_tokens, rw.overlong_buffer_len, rw.overlong_penalty_factor)] \
        if rw.overlong_buffer_len > 0 else []
    if rw.weights:  # after the shaping above: name its components (e.g. overlong_penalty) in reward.weights
        transforms.append(CombineRewards(rw.combine, dict(rw.weights), dict(rw.combine_params)))
    augments = [GreedyBaseline()] if r.greedy_baseline else []
    context = {"device": config.run.device, "policy_path": policy_path}
    rewards = RewardPipeline([build_component(spec, **context) for spec in rw.components], rw.on_failure,
                             rw.max_failures)
    from rlvr.rollout.episodes import Episodes

    episodes = Episodes.from_config(config)  # multi-turn with an environment, or None
    return RolloutProducer(engine, task, params, r.prompts_per_step, plan=plan, selection=selection,
                           transforms=transforms, augments=augments, rewards=rewards, episodes=episodes,
                           env_verifier=config.env.verifier)
