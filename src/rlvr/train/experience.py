"""Experience: scored rollouts, the producer that makes them and the source the learner reads.

Synchronous training is the special case of asynchronous training with a staleness bound of 0:
the loop always asks an :class:`ExperienceSource` for the next batch and never knows how it was
made. :class:`OnPolicyQueue` produces just in time (staleness 0); an asynchronous source (a
replay buffer fed by Ray rollout workers) implements the same three methods.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import torch

from rlvr.rollout.base import Rollout, RolloutEngine, SamplingParams


@dataclass
class Experience:
    """One batch of scored rollouts: B = prompts x G rows."""

    rollout: Rollout
    rewards: torch.Tensor  # [B] the scalar training reward
    reward_components: dict[str, torch.Tensor]  # named rewards from the verifier, each [B]
    group: torch.Tensor  # [B] group id (one per prompt)
    problems: list  # [B] the Problem each row answers
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict = field(default_factory=dict)  # e.g. baseline_rewards [B] (ReMax)

    @property
    def policy_version(self) -> int:
        return self.rollout.policy_version


class PromptSampler:
    """Walks through the training problems in a seeded random order, epoch after epoch.

    Its whole state is one integer (``position``), so a resumed run draws the same prompts.
    """

    def __init__(self, problems: list, seed: int):
        if not problems:
            raise ValueError("the task has no training problems")
        self.problems = problems
        self.seed = seed
        self.position = 0

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.problems), generator=g).tolist()

    def next(self, n: int) -> list:
        out = []
        while len(out) < n:
            epoch, offset = divmod(self.position, len(self.problems))
            order = self._order(epoch)
            take = min(n - len(out), len(order) - offset)
            out.extend(self.problems[i] for i in order[offset:offset + take])
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def score(task, problems: list, texts: list[str]) -> dict[str, torch.Tensor]:
    """Run the task's verifier on every completion; named rewards as float tensors ``[B]``."""
    scores = [task.score(p, t) for p, t in zip(problems, texts)]
    names = scores[0].keys() if scores else ()
    return {k: torch.tensor([s[k] for s in scores], dtype=torch.float32) for k in names}


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer_len: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13).

    ``R_len = min(0, -(|y| - (L_max - L_cache)) / L_cache) * factor``: 0 up to ``L_max - L_cache``,
    then falling linearly to ``-factor`` at ``L_max`` (verl's form; lengths never exceed L_max).
    """
    if buffer_len <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    expected = max_len - buffer_len
    return torch.clamp(-(lengths.float() - expected) / buffer_len, max=0.0) * factor


class RolloutProducer:
    """prompts -> engine -> verifier (-> reward shaping): makes one :class:`Experience` per call.

    Options: ``greedy_baseline`` also decodes one greedy completion per prompt and scores it
    (ReMax's baseline); ``overlong`` = (L_max, L_cache, factor) adds DAPO's length penalty;
    ``dynamic_sampling`` (DAPO) keeps generating until ``prompts_per_step`` groups whose
    ``metric`` is not constant are collected (at most ``max_gen_batches`` rounds);
    ``aggregation`` = (ratio, K) turns on aggregation-aware RL (see :meth:`_aggregation_problems`).
    """

    def __init__(self, engine: RolloutEngine, task, sampler: PromptSampler, params: SamplingParams,
                 prompts_per_step: int, greedy_baseline: bool = False,
                 overlong: tuple[int, int, float] | None = None, dynamic_sampling=None,
                 aggregation: tuple[float, int] | None = None):
        self.engine, self.task, self.sampler = engine, task, sampler
        self.params, self.prompts_per_step = params, prompts_per_step
        self.greedy_baseline, self.overlong = greedy_baseline, overlong
        self.dynamic_sampling = dynamic_sampling if dynamic_sampling and dynamic_sampling.enabled else None
        self.aggregation = aggregation if aggregation and aggregation[0] > 0 else None

    def produce(self) -> Experience:
        if self.dynamic_sampling is None:
            return self._produce(self.prompts_per_step)
        ds, kept, rounds, t_gen, t_score = self.dynamic_sampling, [], 0, 0.0, 0.0
        seen_groups = 0
        while sum(len(torch.unique(e.group)) for e in kept) < self.prompts_per_step:
            if ds.max_gen_batches > 0 and rounds >= ds.max_gen_batches:
                raise ValueError(
                    f"dynamic sampling found only {sum(len(torch.unique(e.group)) for e in kept)} of "
                    f"{self.prompts_per_step} informative groups in {rounds} rounds (groups whose "
                    f"'{ds.metric}' varies); raise rollout.dynamic_sampling.max_gen_batches or "
                    "rollout.group_size, or use an easier task")
            exp = self._produce(self.prompts_per_step)
            rounds += 1
            t_gen += exp.timings["generate"]
            t_score += exp.timings["score"]
            exp = keep_informative_groups(exp, exp.reward_components[ds.metric])
            exp.group = exp.group + seen_groups
            seen_groups += self.prompts_per_step
            kept.append(exp)
        out = truncate_groups(concat_experience(kept, self.engine.tokenizer.pad_token_id), self.prompts_per_step)
        out.timings = {"generate": t_gen, "score": t_score}
        out.extras["gen_rounds"] = rounds
        return out

    def _produce(self, n_prompts: int) -> Experience:
        if self.aggregation is None:
            return self._generate_and_score(self.sampler.next(n_prompts))
        n_agg = aggregation_count(n_prompts, self.aggregation[0])
        plain = self._generate_and_score(self.sampler.next(n_prompts - n_agg))
        plain.extras["aggregation"] = torch.zeros_like(plain.group, dtype=torch.bool)
        if n_agg == 0:
            return plain
        agg = self._generate_and_score(self._aggregation_problems(plain, n_agg))
        agg.group = agg.group + (n_prompts - n_agg)
        agg.rollout.prompt_index = agg.rollout.prompt_index + (n_prompts - n_agg)
        agg.extras["aggregation"] = torch.ones_like(agg.group, dtype=torch.bool)
        out = concat_experience([plain, agg], self.engine.tokenizer.pad_token_id)
        out.timings = {k: plain.timings[k] + agg.timings[k] for k in plain.timings}
        return out

    # --- aggregation-aware RL (RSA, Venkatraman et al. 2025, arXiv 2509.26626, spec section 17)
    def _aggregation_problems(self, plain: Experience, n_agg: int) -> list:
        """``n_agg`` aggregation problems built from the policy's own candidates of this step.

        Aggregation problem j reuses plain group ``j mod n_plain``: its prompt is the task's
        aggregation prompt over K completions drawn without replacement from that group (the
        completions just sampled for the same problem); its answer and verifier are the
        original problem's. The draw is seeded by the sampler's position, so a resumed run
        builds the same prompts.
        """
        from rlvr.tasks.base import Problem, aggregation_prompt

        K = self.aggregation[1]
        g = torch.Generator().manual_seed(self.sampler.seed * 1_000_003 + self.sampler.position)
        groups = list(dict.fromkeys(plain.group.tolist()))
        out = []
        for j in range(n_agg):
            rows = torch.nonzero(plain.group == groups[j % len(groups)]).flatten().tolist()
            picked = [rows[i] for i in torch.randperm(len(rows), generator=g)[:K].tolist()]
            problem = plain.problems[rows[0]]
            prompt = aggregation_prompt(self.task, problem, [plain.rollout.texts[i] for i in picked])
            out.append(Problem(prompt=prompt, answer=problem.answer, meta={**problem.meta, "aggregation": True}))
        return out

    def _generate_and_score(self, problems: list) -> Experience:
        prompts = [p.prompt for p in problems]
        t0 = time.perf_counter()
        rollout = self.engine.generate(prompts, self.params)
        baseline = None
        if self.greedy_baseline:
            greedy = self.engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=self.params.max_new_tokens))
        t1 = time.perf_counter()
        rows = [problems[i] for i in rollout.prompt_index.tolist()]
        components = score(self.task, rows, rollout.texts)
        rewards = components["reward"]
        if self.overlong is not None:
            max_len, buffer_len, factor = self.overlong
            penalty = overlong_penalty(rollout.completion_mask.sum(-1), max_len, buffer_len, factor)
            components["overlong_penalty"] = penalty
            rewards = rewards + penalty
        if self.greedy_baseline:
            baseline = score(self.task, problems, greedy.texts)["reward"][rollout.prompt_index]
        t2 = time.perf_counter()
        exp = Experience(rollout=rollout, rewards=rewards, reward_components=components,
                         group=rollout.prompt_index.clone(), problems=rows,
                         timings={"generate": t1 - t0, "score": t2 - t1})
        if baseline is not None:
            exp.extras["baseline_rewards"] = baseline
        return exp


def aggregation_count(n_prompts: int, ratio: float) -> int:
    """Groups of a step that are aggregation prompts: ``round(ratio * n_prompts)``, at most n - 1."""
    return min(n_prompts - 1, round(ratio * n_prompts))


def select_rows(exp: Experience, idx: torch.Tensor) -> Experience:
    """The rows ``idx`` of an experience batch (all per-row fields sliced alike)."""
    r = exp.rollout
    il = idx.tolist()
    rollout = type(r)(
        prompt_ids=r.prompt_ids[idx], prompt_mask=r.prompt_mask[idx], completion_ids=r.completion_ids[idx],
        completion_mask=r.completion_mask[idx], rollout_logp=r.rollout_logp[idx],
        finish_reason=[r.finish_reason[i] for i in il], prompt_index=r.prompt_index[idx],
        texts=[r.texts[i] for i in il], policy_version=r.policy_version,
        num_generated_tokens=int(r.completion_mask[idx].sum()))
    extras = {k: (v[idx] if isinstance(v, torch.Tensor) and v.shape[:1] == exp.rewards.shape else v)
              for k, v in exp.extras.items()}
    return Experience(rollout=rollout, rewards=exp.rewards[idx],
                      reward_components={k: v[idx] for k, v in exp.reward_components.items()},
                      group=exp.group[idx], problems=[exp.problems[i] for i in il],
                      timings=dict(exp.timings), extras=extras)


def keep_informative_groups(exp: Experience, metric: torch.Tensor) -> Experience:
    """Drop every group whose ``metric`` is the same for all its members (DAPO dynamic sampling)."""
    keep = torch.zeros_like(metric, dtype=torch.bool)
    for g in torch.unique(exp.group):
        rows = exp.group == g
        vals = metric[rows]
        keep[rows] = bool(vals.max() != vals.min())
    return select_rows(exp, torch.nonzero(keep).flatten())


def truncate_groups(exp: Experience, n_groups: int) -> Experience:
    """Keep the first ``n_groups`` groups (in order of first appearance)."""
    order = list(dict.fromkeys(exp.group.tolist()))[:n_groups]
    keep = torch.isin(exp.group, torch.tensor(order, dtype=exp.group.dtype))
    return select_rows(exp, torch.nonzero(keep).flatten())


def concat_experience(parts: list[Experience], pad_id: int) -> Experience:
    from rlvr.rollout.hf import _pad_cat

    rs = [p.rollout for p in parts]
    rollout = type(rs[0])(
        prompt_ids=_pad_cat([r.prompt_ids for r in rs], pad_id, left=True),
        prompt_mask=_pad_cat([r.prompt_mask for r in rs], 0, left=True),
        completion_ids=_pad_cat([r.completion_ids for r in rs], pad_id, left=False),
        completion_mask=_pad_cat([r.completion_mask for r in rs], 0, left=False),
        rollout_logp=_pad_cat([r.rollout_logp for r in rs], 0.0, left=False),
        finish_reason=sum((r.finish_reason for r in rs), []),
        prompt_index=torch.cat([r.prompt_index for r in rs]), texts=sum((r.texts for r in rs), []),
        policy_version=min(r.policy_version for r in rs),
        num_generated_tokens=sum(r.num_generated_tokens for r in rs))
    keys = parts[0].reward_components.keys()
    extras = {k: torch.cat([p.extras[k] for p in parts]) for k, v in parts[0].extras.items()
              if isinstance(v, torch.Tensor)}
    return Experience(rollout=rollout, rewards=torch.cat([p.rewards for p in parts]),
                      reward_components={k: torch.cat([p.reward_components[k] for p in parts]) for k in keys},
                      group=torch.cat([p.group for p in parts]), problems=sum((p.problems for p in parts), []),
                      extras=extras)


class ExperienceSource(Protocol):
    def next_batch(self, policy_version: int) -> Experience: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class OnPolicyQueue:
    """A queue between producer and learner with a staleness bound.

    ``max_staleness=0`` (synchronous GRPO/PPO): every batch comes from the current policy, produced
    when the learner asks for it. Batches older than the bound are dropped.
    """

    def __init__(self, producer: RolloutProducer, max_staleness: int = 0):
        self.producer = producer
        self.max_staleness = max_staleness
        self.queue: deque[Experience] = deque()

    def next_batch(self, policy_version: int) -> Experience:
        while self.queue and policy_version - self.queue[0].policy_version > self.max_staleness:
            self.queue.popleft()
        if not self.queue:
            self.queue.append(self.producer.produce())
        return self.queue.popleft()

    def state_dict(self) -> dict:
        return {"sampler": self.producer.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.producer.sampler.load_state_dict(state["sampler"])
