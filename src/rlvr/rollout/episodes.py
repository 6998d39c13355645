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
(``max_turns``), when a turn reaches its token cap without a stop, or the episode's tokens would pass
``max_total_tokens`` or the model's context (prompt and completion within its ``max_position_embeddings``)
(``length``: a turn cut there is still shown to the environment, for its reward), or when an
environment step takes longer than ``step_timeout_s`` (``timeout``). The observation of the last turn is never
appended. A row's reward is the sum of its turn rewards.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
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
    env_workers: int = 8  # threads stepping environments (0: each step inline, in this thread)
    step_timeout_s: float = 60.0  # an environment step that takes longer ends its episode ("timeout")
    interleave: bool = False  # the next turn for whichever episodes are ready (no lockstep turns)

    def __post_init__(self):
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, not {self.max_turns}")
        if self.max_total_tokens < 1:
            raise ValueError(f"max_total_tokens must be >= 1, not {self.max_total_tokens}")
        if self.env_workers < 0 or self.step_timeout_s <= 0:
            raise ValueError("env_workers must be >= 0 and step_timeout_s > 0")


@dataclass
class _Episode:
    prompt: list[int]
    budget: int = 0  # the completion's tokens at most: max_total_tokens, or less where the context ends first
    ids: list[int] = field(default_factory=list)
    loss: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    turn_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each action in ids
    turn_rewards: list[float] = field(default_factory=list)
    observation_tokens: int = 0
    observations: int = 0  # observations appended (a tool environment: the calls answered)
    timeouts: int = 0
    info: dict = field(default_factory=dict)  # the environment's info of the last step
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
    """One episode per environment ``envs[b]`` on ``problems[b]`` (reset with ``seeds[b]``). ``params.max_new_tokens``
    caps each turn; ``params.n`` is ignored (a group is G environments). Returns the episodes as a
    :class:`Rollout` (see the module docstring); ``extras`` holds each row's ``turn_rewards``, ``turn_spans``,
    ``turns``, ``observation_tokens``, ``transcript`` and ``timeouts``.

    Environment steps run in a thread pool of ``limits.env_workers`` (0: inline), each within
    ``limits.step_timeout_s``: a step that takes longer ends its episode (finish reason ``timeout``, the
    observation not appended, the turn's reward 0) and is counted. ``limits.interleave``: the policy's next turn
    is sampled for whichever episodes' steps have finished, without waiting for the slowest (environment-level
    asynchrony, ROLL Flash); otherwise turns are lockstep, every live episode's turn in one engine call, and a
    batch is reproducible bit for bit whatever the steps' timing.

    ``group_size`` G: rows come in groups of G consecutive environments; when a group's first prompts and stops
    agree, its first turn is one engine call with ``n = G`` (one prefill per prompt, and the very samples the
    single-turn path draws: with ``max_turns = 1`` and no observation the episodes equal ``engine.generate``).
    Every later engine call samples from its own seeded stream (``params.seed`` + the call's index)."""
    episodes = [_Episode(prompt=_first_prompt(tokenizer, env, env.reset(problem, int(seed))))
                for env, problem, seed in zip(envs, problems, seeds)]
    context = _context_length(engine)
    for e in episodes:
        e.budget = min(limits.max_total_tokens, context - len(e.prompt))
        if e.budget < 1:
            raise ValueError(f"an episode's first prompt is {len(e.prompt)} tokens, the model's whole context "
                             f"({context} positions): shorten the prompt (or the tools' descriptions)")
    version = engine.policy_version
    pool = ThreadPoolExecutor(limits.env_workers, thread_name_prefix="rlvr-env") if limits.env_workers else None
    ready = list(range(len(episodes)))  # episodes waiting for the policy's turn
    pending: dict = {}  # future -> (row, the action's turn was cut, deadline)
    calls = 0
    try:
        while ready or pending:
            if ready and (limits.interleave or not pending):
                rows, ready = sorted(ready), []
                for b, cut, action in _policy_turn(engine, tokenizer, envs, episodes, rows, params, limits, calls,
                                                   group_size):
                    fut = pool.submit(envs[b].step, action) if pool else _done(envs[b].step, action)
                    pending[fut] = (b, cut, time.monotonic() + limits.step_timeout_s)
                calls += 1
            finished = _wait(pending, limits.interleave)
            for fut in finished:
                b, cut, _ = pending.pop(fut)
                if _after_step(episodes[b], envs[b], fut, cut, tokenizer, limits):
                    ready.append(b)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)  # a hung step's thread is left behind, not waited on
    return _rollout(episodes, tokenizer, version)


def _context_length(engine) -> int:
    """The positions the engine's model has (its config's ``max_position_embeddings``; unbounded if unknown)."""
    config = getattr(getattr(engine, "model", None), "config", None)
    return int(getattr(config, "max_position_embeddings", 0) or 1 << 30)


def _first_prompt(tokenizer, env, first) -> list[int]:
    """The episode's prompt ids: text as it is (the tokenizer's own special tokens added, as a single-turn prompt),
    or chat messages rendered with the template, the environment's ``tools`` and ``chat_template_kwargs``."""
    if isinstance(first, str):
        return list(tokenizer(first)["input_ids"])
    from rlvr.rollout.chat import render_ids

    return render_ids(tokenizer, list(first), getattr(env, "tools", None), getattr(env, "chat_template_kwargs", None))


def _observation_ids(e: _Episode, env, observation, tokenizer) -> list[int]:
    """The ids appended after the episode's last turn: text tokenized as it is (no special tokens), or chat
    messages through the template's seam (:func:`rlvr.rollout.chat.seam_ids`)."""
    if isinstance(observation, str):
        if observation and getattr(tokenizer, "chat_template", None):
            _warn_chat_seam(tokenizer)
        return list(tokenizer(observation, add_special_tokens=False)["input_ids"]) if observation else []
    from rlvr.rollout.chat import seam_ids

    start, end = e.turn_spans[-1]
    return seam_ids(tokenizer, e.ids[start:end], list(observation), getattr(env, "tools", None),
                    getattr(env, "chat_template_kwargs", None))


def _warn_chat_seam(tokenizer) -> None:
    """Once per tokenizer: a chat model's episode got an observation as text, appended with no turn markers."""
    if getattr(tokenizer, "_rlvr_chat_seam_warned", False):
        return
    import warnings

    warnings.warn("multi-turn episodes with a chat template: an observation given as text is appended as it is "
                  "after the policy's turn, with none of the template's turn markers (<|im_start|>user ...); give "
                  "chat messages instead ([{'role': 'tool', 'content': ...}]) and rlvr renders the seam between "
                  "turns with the template (docs/agentic.md)", stacklevel=4)
    try:
        tokenizer._rlvr_chat_seam_warned = True
    except AttributeError:
        pass


def _done(fn, *args) -> Future:
    """``fn(*args)`` run now, as a finished future (no pool)."""
    fut: Future = Future()
    try:
        fut.set_result(fn(*args))
    except BaseException as err:  # noqa: BLE001 - raised where the result is read
        fut.set_exception(err)
    return fut


def _wait(pending: dict, interleave: bool) -> list:
    """The futures to handle now: lockstep, all of them (each waited on until its deadline); interleaved, the
    first to finish, with any others finished by then. A future past its deadline counts as finished (its
    step timed out)."""
    if not pending:
        return []
    while True:
        now = time.monotonic()
        late = [f for f, (_, _, deadline) in pending.items() if deadline <= now and not f.done()]
        done = [f for f in pending if f.done()]
        if (interleave and (done or late)) or (not interleave and len(done) + len(late) == len(pending)):
            return [f for f in pending if f in done or f in late]
        waiting = [f for f in pending if not f.done()]
        next_deadline = min(pending[f][2] for f in waiting)
        wait(waiting, timeout=max(0.0, next_deadline - now), return_when=FIRST_COMPLETED)


def _policy_turn(engine, tokenizer, envs, episodes, rows, params, limits, call: int, group_size: int):
    """Sample the next turn of the episodes ``rows``; yields ``(row, cut, action text)`` for each."""
    seed = params.seed if params.seed is None or call == 0 else (params.seed + 1_000_003 * call) % (2**62)
    turn_params = dataclasses.replace(params, seed=seed, n=1)
    if call == 0 and group_size > 1 and len(rows) == len(episodes) and _grouped(episodes, envs, group_size):
        batches = _merge([(tuple(envs[b].stop), list(range(b, b + group_size)), group_size)
                          for b in range(0, len(episodes), group_size)])
    else:
        by_stops: dict[tuple, list[int]] = {}  # one engine call per distinct set of stop strings
        for b in rows:
            by_stops.setdefault(tuple(envs[b].stop), []).append(b)
        batches = [(strings, group, 1) for strings, group in by_stops.items()]
    for strings, group, n in batches:
        stops = turn_stops(engine.stops, strings, tokenizer)
        cap = min(params.max_new_tokens, max(episodes[b].budget - len(episodes[b].ids) for b in group))
        contexts = [episodes[b].prompt + episodes[b].ids for b in group[::n]]
        out = engine.generate_ids(contexts, dataclasses.replace(turn_params, max_new_tokens=cap, n=n), stops)
        for i, b in enumerate(group):
            cut, action = _record_action(episodes[b], out, i, tokenizer, limits)
            yield b, cut, action


def _record_action(e: _Episode, out: Rollout, i: int, tokenizer, limits: EpisodeLimits) -> tuple[bool, str]:
    """Append row ``i`` of ``out`` (the policy's turn) to the episode, within its token budget; returns whether
    the turn was cut (its cap or the budget reached before a stop) and its text for the environment."""
    n = int(out.completion_mask[i].sum())
    room = e.budget - len(e.ids)
    ids, logp = out.completion_ids[i, :n].tolist(), out.rollout_logp[i, :n].tolist()
    cut = n > room or out.finish_reason[i] == "length"
    ids, logp = ids[:room], logp[:room]
    start = len(e.ids)
    e.ids += ids
    e.loss += [1] * len(ids)
    e.logp += logp
    e.turn_spans.append((start, len(e.ids)))
    return cut, tokenizer.decode(ids, skip_special_tokens=True)


def _after_step(e: _Episode, env, fut: Future, cut: bool, tokenizer, limits: EpisodeLimits) -> bool:
    """The environment's answer to the episode's last turn: its reward, the end of the episode or the observation
    appended. Returns whether the episode goes on (its next turn is the policy's)."""
    if not fut.done():  # past its deadline
        e.turn_rewards.append(0.0)
        e.timeouts += 1
        e.finish = "timeout"
        return False
    result = fut.result()  # an exception in the environment's step is raised here
    e.turn_rewards.append(float(result.reward))
    e.info = dict(result.info or {})
    if cut:  # (as a single-turn completion that hit its cap: length, whatever the environment says)
        e.finish = "length"
    elif result.done:
        e.finish = "stop"
    elif len(e.turn_spans) >= limits.max_turns:
        e.finish = "max_turns"
    else:
        obs = _observation_ids(e, env, result.observation, tokenizer)
        if len(e.ids) + len(obs) >= e.budget:  # no room for the observation and another turn
            e.finish = "length"
            return False
        e.ids += obs
        e.loss += [0] * len(obs)
        e.logp += [0.0] * len(obs)
        e.observation_tokens += len(obs)
        e.observations += 1
        return True
    return False


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
              "timeouts": [e.timeouts for e in episodes],
              "observations": [e.observations for e in episodes],
              "final_info": [e.info for e in episodes],
              "versions": [[version] * len(e.turn_spans) for e in episodes],  # each turn's policy version
              "transcript": [transcript(e.ids, e.loss, tokenizer) for e in episodes],
              "prompt_text": [tokenizer.decode(e.prompt) for e in episodes]}  # as the policy first saw it
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
                   EpisodeLimits(env.max_turns, env.token_budget(config.rollout.max_new_tokens), env.workers,
                                 env.step_timeout_s, env.interleave))

    def rollout(self, engine, task, problems: list, params: SamplingParams) -> Rollout:
        from rlvr.envs import make_env

        G = params.n
        rows = [p for p in problems for _ in range(G)]
        given = {"task": task, "tokenizer": engine.tokenizer}  # for an environment that asks for them
        envs = [make_env(self.name, given, **self.options) for _ in rows]
        base = 0 if params.seed is None else int(params.seed)
        seeds = [(base + 7_919 * i) % (2**31) for i in range(len(problems)) for _ in range(G)]
        try:
            rollout = run_episodes(engine, engine.tokenizer, envs, rows, seeds, params, self.limits, group_size=G)
        finally:
            for env in envs:
                env.close()
        if callable(getattr(envs[0], "difficulty", None)) if envs else False:  # evaluation's breakdown by level
            rollout.extras["difficulty"] = [env.difficulty(p) for env, p in zip(envs, rows)]
        rollout.prompt_index = torch.arange(len(problems)).repeat_interleave(G)
        return rollout


def env_correct(rollout) -> torch.Tensor | None:
    """Each episode's ``correct`` as its environment judged it (the last step's ``info["correct"]``), or None when
    an episode has none (then the task's verifier on the transcript stands)."""
    infos = rollout.extras.get("final_info")
    if not infos or any("correct" not in i for i in infos):
        return None
    return torch.tensor([float(i["correct"]) for i in infos], dtype=torch.float32)
