"""Multi-turn episodes: the policy and an environment take turns, token ids in, token ids out.

Each turn, every live episode's context (its prompt ids, then every id sampled so far and every observation's
ids, exactly as they were) goes to the engine's :meth:`~rlvr.rollout.base.RolloutEngine.generate_ids`, which
samples until a stop token, one of the environment's stop strings, or the turn's token cap. The sampled ids are
kept as they are (never decoded and re-encoded: a BPE tokenizer would merge them differently,
``../shared/design/agentic.md`` section 4); only the environment's new text is tokenized, without special tokens,
and appended. The episode's completion is ``action_1 + observation_1 + action_2 + ...`` with two masks over it:

* ``completion_mask``: the tokens that are there (the forward attends to all of them);
* ``loss_mask``: the tokens the policy sampled (its stop tokens included), the only ones trained on.
  ``rollout_logp`` is 0 elsewhere.

An episode ends when the environment says done (finish reason ``stop``), after ``max_turns`` turns
(``max_turns``), or when a turn reaches its token cap without a stop, or the episode's tokens would pass
``max_total_tokens`` (``length``: a turn cut there is still shown to the environment, for its reward). The
observation of the last turn is never appended. A row's reward is the sum of its turn rewards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch

from rlvr.rollout.base import Rollout, SamplingParams
from rlvr.rollout.stops import StopConditions


@dataclass
class EpisodeLimits:
    """How long an episode may run."""

    max_turns: int = 4  # policy turns
    max_total_tokens: int = 256  # the completion: the policy's tokens and the observations', together

    def __post_init__(self):
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, not {self.max_turns}")
        if self.max_total_tokens < 1:
            raise ValueError(f"max_total_tokens must be >= 1, not {self.max_total_tokens}")


@dataclass
class _Episode:
    prompt: list[int]
    ids: list[int] = field(default_factory=list)
    loss: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    turn_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each action in ids
    turn_rewards: list[float] = field(default_factory=list)
    observation_tokens: int = 0
    finish: str | None = None


def turn_stops(base: StopConditions, strings: Sequence[str], tokenizer) -> StopConditions:
    """``base`` plus an environment's stop strings: a string that is one token is a stop token (exact and
    cheap), any other stays a string (the turn ends at the token that completes it)."""
    ids, rest = list(base.token_ids), list(base.strings)
    sources = dict(base.sources)
    for s in strings:
        enc = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(enc) == 1:
            ids.append(int(enc[0]))
            sources.setdefault(int(enc[0]), "environment")
        else:
            rest.append(s)
    return StopConditions(tuple(dict.fromkeys(ids)), tuple(dict.fromkeys(rest)), sources)


def run_episodes(engine, tokenizer, envs: Sequence, problems: Sequence, seeds: Sequence[int],
                 params: SamplingParams, limits: EpisodeLimits, group_size: int = 1) -> Rollout:
    """One episode per environment ``envs[b]`` on ``problems[b]`` (reset with ``seeds[b]``), all in lockstep
    turns. ``params.max_new_tokens`` caps each turn; ``params.n`` is ignored (a group is G environments).
    Returns the episodes as a :class:`Rollout` (see the module docstring); ``extras`` holds each row's
    ``turn_rewards``, ``turn_spans``, ``turns``, ``observation_tokens`` and ``transcript``.

    ``group_size`` G: rows come in groups of G consecutive environments; when a group's first prompts and stops
    agree, its first turn is one engine call with ``n = G`` (one prefill per prompt, and the very samples the
    single-turn path draws: with ``max_turns = 1`` and no observation the episodes equal ``engine.generate``).
    Each later turn samples from its own seeded stream (``params.seed`` + the turn)."""
    episodes = [_Episode(prompt=list(tokenizer(env.reset(problem, int(seed)))["input_ids"]))
                for env, problem, seed in zip(envs, problems, seeds)]
    version = engine.policy_version
    base = engine.stops
    for turn in range(limits.max_turns):
        live = [b for b, e in enumerate(episodes) if e.finish is None]
        if not live:
            break
        seed = params.seed if params.seed is None or turn == 0 else (params.seed + 1_000_003 * turn) % (2**62)
        turn_params = dataclasses.replace(params, seed=seed, n=1)
        if turn == 0 and group_size > 1 and _grouped(episodes, envs, group_size):
            calls = [(tuple(envs[b].stop), list(range(b, b + group_size)), group_size)
                     for b in range(0, len(episodes), group_size)]
            calls = _merge(calls)
        else:
            by_stops: dict[tuple, list[int]] = {}  # one engine call per distinct set of stop strings
            for b in live:
                by_stops.setdefault(tuple(envs[b].stop), []).append(b)
            calls = [(strings, rows, 1) for strings, rows in by_stops.items()]
        for strings, rows, n in calls:
            stops = turn_stops(base, strings, tokenizer)
            cap = min(params.max_new_tokens, max(limits.max_total_tokens - len(episodes[b].ids) for b in rows))
            contexts = [episodes[b].prompt + episodes[b].ids for b in rows[::n]]
            out = engine.generate_ids(contexts, dataclasses.replace(turn_params, max_new_tokens=cap, n=n), stops)
            for i, b in enumerate(rows):
                _take_turn(episodes[b], envs[b], out, i, tokenizer, limits, turn)
    return _rollout(episodes, tokenizer, version)


def _grouped(episodes: list[_Episode], envs: Sequence, G: int) -> bool:
    """Whether every group of G consecutive rows starts from one prompt with one set of stops."""
    if len(episodes) % G:
        return False
    return all(episodes[b].prompt == episodes[b0].prompt and tuple(envs[b].stop) == tuple(envs[b0].stop)
               for b0 in range(0, len(episodes), G) for b in range(b0, b0 + G))


def _merge(calls: list[tuple]) -> list[tuple]:
    """Groups with the same stops in one engine call (their rows in order)."""
    merged: dict[tuple, tuple] = {}
    for strings, rows, n in calls:
        _, have, _ = merged.get(strings, (strings, [], n))
        merged[strings] = (strings, have + rows, n)
    return list(merged.values())


def _take_turn(e: _Episode, env, out: Rollout, i: int, tokenizer, limits: EpisodeLimits, turn: int) -> None:
    n = int(out.completion_mask[i].sum())
    room = limits.max_total_tokens - len(e.ids)
    ids, logp = out.completion_ids[i, :n].tolist(), out.rollout_logp[i, :n].tolist()
    cut = n > room or out.finish_reason[i] == "length"
    ids, logp = ids[:room], logp[:room]
    start = len(e.ids)
    e.ids += ids
    e.loss += [1] * len(ids)
    e.logp += logp
    e.turn_spans.append((start, len(e.ids)))
    result = env.step(tokenizer.decode(ids, skip_special_tokens=True))
    e.turn_rewards.append(float(result.reward))
    if cut:  # (as a single-turn completion that hit its cap: length, whatever the environment says)
        e.finish = "length"
    elif result.done:
        e.finish = "stop"
    elif turn == limits.max_turns - 1:
        e.finish = "max_turns"
    else:
        obs = list(tokenizer(result.observation, add_special_tokens=False)["input_ids"]) if result.observation else []
        if len(e.ids) + len(obs) >= limits.max_total_tokens:  # no room for the observation and another turn
            e.finish = "length"
            return
        e.ids += obs
        e.loss += [0] * len(obs)
        e.logp += [0.0] * len(obs)
        e.observation_tokens += len(obs)


def transcript(ids: list[int], loss: list[int], tokenizer) -> list[list[str]]:
    """An episode's completion as ``[[role, text], ...]``: ``policy`` for the runs of sampled tokens, ``env`` for
    the observations (special tokens such as EOS kept, so a reader sees where a turn ended)."""
    parts, start = [], 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or loss[t] != loss[start]:
            parts.append(["policy" if loss[start] else "env", tokenizer.decode(ids[start:t])])
            start = t
    return parts


def _rollout(episodes: list[_Episode], tokenizer, version: int) -> Rollout:
    B = len(episodes)
    pad = tokenizer.pad_token_id
    P = max(len(e.prompt) for e in episodes)
    T = max(1, max(len(e.ids) for e in episodes))
    prompt_ids = torch.full((B, P), pad, dtype=torch.long)
    prompt_mask = torch.zeros((B, P), dtype=torch.long)
    completion_ids = torch.full((B, T), pad, dtype=torch.long)
    completion_mask = torch.zeros((B, T), dtype=torch.long)
    loss_mask = torch.zeros((B, T), dtype=torch.long)
    logp = torch.zeros((B, T), dtype=torch.float32)
    for b, e in enumerate(episodes):
        prompt_ids[b, P - len(e.prompt):] = torch.tensor(e.prompt)
        prompt_mask[b, P - len(e.prompt):] = 1
        n = len(e.ids)
        if n:
            completion_ids[b, :n] = torch.tensor(e.ids)
            completion_mask[b, :n] = 1
            loss_mask[b, :n] = torch.tensor(e.loss)
            logp[b, :n] = torch.tensor(e.logp)
    texts = tokenizer.batch_decode([e.ids for e in episodes], skip_special_tokens=True)
    extras = {"turn_rewards": [e.turn_rewards for e in episodes], "turn_spans": [e.turn_spans for e in episodes],
              "turns": [len(e.turn_spans) for e in episodes],
              "observation_tokens": [e.observation_tokens for e in episodes],
              "transcript": [transcript(e.ids, e.loss, tokenizer) for e in episodes]}
    return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                   completion_mask=completion_mask, rollout_logp=logp, finish_reason=[e.finish for e in episodes],
                   prompt_index=torch.arange(B), texts=texts, policy_version=version,
                   num_generated_tokens=int(loss_mask.sum()), extras=extras,
                   versions=torch.full((B,), version, dtype=torch.long),
                   loss_mask=None if torch.equal(loss_mask, completion_mask) else loss_mask)


@dataclass(frozen=True)
class Episodes:
    """Multi-turn rollouts (``env`` config section): each row is an episode of the policy with its own
    environment ``name`` (:mod:`rlvr.envs`); a group's G environments reset with the same seed. Returns the
    episodes' :class:`~rlvr.rollout.base.Rollout` (:func:`rlvr.rollout.episodes.run_episodes`)."""

    name: str
    options: dict
    limits: EpisodeLimits

    @classmethod
    def from_config(cls, config) -> "Episodes | None":
        """The episodes the ``env`` config section asks for; None for a single-turn run."""
        env = config.env
        if not env.name:
            return None
        return cls(env.name, dict(env.options),
                   EpisodeLimits(env.max_turns, env.token_budget(config.rollout.max_new_tokens)))

    def rollout(self, engine, task, problems: list, params: SamplingParams) -> Rollout:
        import inspect

        from rlvr.envs import ENVIRONMENTS, make_env

        make_env(self.name) if self.name not in ENVIRONMENTS else None  # an unknown name: the error names the known
        takes_task = "task" in inspect.signature(ENVIRONMENTS[self.name]).parameters
        G = params.n
        rows = [p for p in problems for _ in range(G)]
        envs = [make_env(self.name, **({"task": task} if takes_task else {}), **self.options) for _ in rows]
        base = 0 if params.seed is None else int(params.seed)
        seeds = [(base + 7_919 * i) % (2**31) for i in range(len(problems)) for _ in range(G)]
        try:
            rollout = run_episodes(engine, engine.tokenizer, envs, rows, seeds, params, self.limits, group_size=G)
        finally:
            for env in envs:
                env.close()
        rollout.prompt_index = torch.arange(len(problems)).repeat_interleave(G)
        return rollout
