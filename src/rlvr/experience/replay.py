"""Replay buffers between rollout workers ("searchers") and the learner.

    searchers (OnPolicyQueue in place | AsyncSource's rollout workers: threads or Ray actors)
        │ scored batches, each row with the policy version that made it
        ▼
    ReplaySource.next_batch(version):  drain finished batches into the buffer (never blocks after
        │                              the initial fill), then sample a training batch from it
        ▼
    learner (tb: trajectory balance, off-policy valid; or a clipped / corrected loss)

Two buffer policies (``replay.policy``), both plain classes (tested without Ray or threads):

* :class:`ReplayBuffer` (``tba``): TBA (Bartoldson et al. 2025, arXiv 2503.18929, spec 9.2;
  authors' ``src/buffer_utils.py``). One buffer per prompt (keyed by the prompt's index in the
  task's training problems), at most ``capacity`` responses, deduplicated by completion token
  sequence (the newest copy kept), ordered by the policy version that made them (the oldest are
  evicted first). A batch of ``n`` prompts x ``K`` responses: per prompt, with probability
  ``on_policy_prob`` a prompt refreshed by the newest wave of arrivals (the first arrival after a
  weight sync starts a wave) and K of its responses from that wave, drawn uniformly; else a seen
  prompt and K responses drawn with probabilities ``softmax(inv_temp * reward)`` (``priority:
  reward``) or ``softmax(inv_temp * version)`` (``recency``). Prompts are drawn without replacement
  from the online set and from the seen set, each refilled when empty (as the authors do); responses
  with replacement only when a buffer holds fewer than K (counted: ``replay/with_replacement``).
* :class:`VarianceReplay` (``variance``): TRL's GRPO-with-replay
  (``trl/experimental/grpo_with_replay_buffer``): the groups of each fresh batch whose rewards vary
  are kept (the ``capacity`` best by ``sum_k |r_k - mean|``, TRL's ``|advantage| x std`` score without
  std scaling), and the zero-variance groups of the batch are replaced by kept groups drawn in
  proportion to that score.

Every draw comes from one seeded ``torch.Generator``; ``state_dict`` holds the items in flat
tensors plus the generator state, so a resumed run makes the same future draws.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from rlvr.rollout.base import Rollout
from rlvr.experience.batch import Experience


@dataclasses.dataclass
class Item:
    """One scored response, unpadded."""

    completion: tuple[int, ...]
    logp: list[float]  # rollout_logp of the completion tokens (the behaviour policy)
    reward: float
    components: dict[str, float]
    finish: str
    text: str
    version: int  # policy version that generated it
    wave: int = 0  # arrival wave (tba: which sync period it arrived in)
    seq: int = 0  # global arrival order (ties in version)


def split_experience(exp: Experience, index_of: dict[str, int]) -> list[tuple[int, tuple[int, ...], Item]]:
    """(problem index, prompt token ids, item) for every row of a scored batch."""
    r = exp.rollout
    if r.loss_mask is not r.completion_mask and not torch.equal(r.loss_mask != 0, r.completion_mask != 0):
        raise ValueError("replay keeps whole completions and would train the tokens an environment inserted "
                         "(rollout.loss_mask differs from the completion mask): multi-turn rollouts cannot be "
                         "replayed yet; set replay.enabled=false")
    out = []
    names = list(exp.reward_components)
    for i in range(exp.rewards.shape[0]):
        prompt = exp.problems[i].prompt
        if prompt not in index_of:
            raise ValueError("replay: a row's prompt is not one of the task's training problems "
                             "(aggregation or generated prompts cannot be replayed)")
        p_ids = tuple(r.prompt_ids[i][r.prompt_mask[i] != 0].tolist())
        n = int(r.completion_mask[i].sum())
        item = Item(completion=tuple(r.completion_ids[i, :n].tolist()), logp=r.rollout_logp[i, :n].tolist(),
                    reward=float(exp.rewards[i]),
                    components={k: float(exp.reward_components[k][i]) for k in names},
                    finish=r.finish_reason[i], text=r.texts[i], version=int(r.versions[i]))
        out.append((index_of[prompt], p_ids, item))
    return out


def build_experience(groups: list[tuple[int, tuple[int, ...], list[Item]]], problems: list, pad_id: int,
                     generated_tokens: int | None = None) -> Experience:
    """Padded tensors from ``(problem index, prompt ids, items)`` groups; group g is rows of groups[g]."""
    rows = [(g, key, p_ids, it) for g, (key, p_ids, items) in enumerate(groups) for it in items]
    B = len(rows)
    P = max(len(p) for _, _, p, _ in rows)
    T = max(1, max(len(it.completion) for *_, it in rows))
    prompt_ids = torch.full((B, P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(B, P, dtype=torch.long)
    completion_ids = torch.full((B, T), pad_id, dtype=torch.long)
    completion_mask = torch.zeros(B, T, dtype=torch.long)
    rollout_logp = torch.zeros(B, T)
    for i, (_, _, p_ids, it) in enumerate(rows):
        if p_ids:
            prompt_ids[i, P - len(p_ids):] = torch.tensor(p_ids)
            prompt_mask[i, P - len(p_ids):] = 1
        n = len(it.completion)
        if n:
            completion_ids[i, :n] = torch.tensor(it.completion)
            completion_mask[i, :n] = 1
            rollout_logp[i, :n] = torch.tensor(it.logp, dtype=torch.float32)
    group = torch.tensor([g for g, *_ in rows], dtype=torch.long)
    versions = torch.tensor([it.version for *_, it in rows], dtype=torch.long)
    rollout = Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                      completion_mask=completion_mask, rollout_logp=rollout_logp,
                      finish_reason=[it.finish for *_, it in rows], prompt_index=group.clone(),
                      texts=[it.text for *_, it in rows], policy_version=int(versions.min()),
                      num_generated_tokens=int(completion_mask.sum()) if generated_tokens is None else generated_tokens,
                      versions=versions)
    names = list(rows[0][3].components)
    components = {k: torch.tensor([it.components.get(k, 0.0) for *_, it in rows], dtype=torch.float32)
                  for k in names}
    return Experience(rollout=rollout, rewards=torch.tensor([it.reward for *_, it in rows], dtype=torch.float32),
                      reward_components=components, group=group,
                      problems=[problems[key] for _, key, _, _ in rows], timings={"generate": 0.0, "score": 0.0})


# ------------------------------------------------------------------------------------------------
# compact state: items as flat tensors

def _pack_items(entries: list[tuple[int, Item]]) -> dict:
    """``(owner, item)`` pairs as flat tensors (owner: a prompt index or a group slot)."""
    names = sorted({k for _, it in entries for k in it.components})
    finishes = sorted({it.finish for _, it in entries})
    lens = [len(it.completion) for _, it in entries]
    return {
        "owner": torch.tensor([o for o, _ in entries], dtype=torch.long),
        "length": torch.tensor(lens, dtype=torch.int32),
        "tokens": torch.tensor([t for _, it in entries for t in it.completion], dtype=torch.int64),
        "logp": torch.tensor([x for _, it in entries for x in it.logp], dtype=torch.float32),
        "reward": torch.tensor([it.reward for _, it in entries], dtype=torch.float64),
        "components": {k: torch.tensor([it.components.get(k, 0.0) for _, it in entries], dtype=torch.float64)
                       for k in names},
        "finish_names": finishes,
        "finish": torch.tensor([finishes.index(it.finish) for _, it in entries], dtype=torch.int16),
        "text": [it.text for _, it in entries],
        "version": torch.tensor([it.version for _, it in entries], dtype=torch.long),
        "wave": torch.tensor([it.wave for _, it in entries], dtype=torch.long),
        "seq": torch.tensor([it.seq for _, it in entries], dtype=torch.long),
    }


def _unpack_items(packed: dict) -> list[tuple[int, Item]]:
    out, t0 = [], 0
    tokens, logp = packed["tokens"].tolist(), packed["logp"].tolist()
    comps = {k: v.tolist() for k, v in packed["components"].items()}
    for i, n in enumerate(packed["length"].tolist()):
        item = Item(completion=tuple(tokens[t0:t0 + n]), logp=logp[t0:t0 + n], reward=float(packed["reward"][i]),
                    components={k: v[i] for k, v in comps.items()},
                    finish=packed["finish_names"][int(packed["finish"][i])], text=packed["text"][i],
                    version=int(packed["version"][i]), wave=int(packed["wave"][i]), seq=int(packed["seq"][i]))
        out.append((int(packed["owner"][i]), item))
        t0 += n
    return out


class _PromptBuffer:
    __slots__ = ("prompt_ids", "items", "wave")

    def __init__(self, prompt_ids: tuple[int, ...]):
        self.prompt_ids, self.items, self.wave = prompt_ids, [], -1


class ReplayBuffer:
    """TBA's per-prompt replay buffers and their sampler (see the module docstring)."""

    def __init__(self, problems: list, capacity: int = 100, on_policy_prob: float = 0.95, inv_temp: float = 0.0,
                 priority: str = "reward", pad_id: int = 0, seed: int = 0):
        if priority not in ("reward", "recency"):
            raise ValueError(f"unknown replay priority {priority!r}; known: reward, recency")
        self.problems, self.capacity, self.m = problems, capacity, on_policy_prob
        self.inv_temp, self.priority, self.pad_id = inv_temp, priority, pad_id
        self.index_of: dict[str, int] = {}
        for i, p in enumerate(problems):
            self.index_of.setdefault(p.prompt, i)
        self.g = torch.Generator().manual_seed(int(seed) % (2**63))
        self.buffers: dict[int, _PromptBuffer] = {}
        self.seen: list[int] = []  # prompts in the order first seen
        self.wave, self.seq, self.new_wave = 0, 0, True
        self.online: list[int] = []  # online prompts not yet drawn in this wave
        self.used_online: list[int] = []  # online prompts already drawn (refill when online runs out)
        self.offline: list[int] = []  # seen prompts not yet drawn in this pass
        self.counts = {"added": 0, "duplicates": 0, "evicted": 0, "with_replacement": 0}

    # --- filling
    def mark_sync(self) -> None:
        """New weights were published: the next arrival starts a new online wave."""
        self.new_wave = True

    def add(self, exp: Experience) -> int:
        """Split a scored batch into items and merge them into their prompts' buffers; returns new items."""
        if self.new_wave:
            self.wave += 1
            self.online, self.used_online, self.new_wave = [], [], False
        before = self.counts["added"]
        for key, p_ids, item in split_experience(exp, self.index_of):
            self._insert(key, p_ids, item)
        return self.counts["added"] - before

    def _insert(self, key: int, p_ids: tuple[int, ...], item: Item) -> None:
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = _PromptBuffer(p_ids)
            self.seen.append(key)
            self.offline.append(key)
        if buf.wave != self.wave:
            buf.wave = self.wave
        if key not in self.online and key not in self.used_online:
            self.online.append(key)
        item.wave, item.seq = self.wave, self.seq
        self.seq += 1
        old = next((j for j, it in enumerate(buf.items) if it.completion == item.completion), None)
        if old is not None:  # dedup: the newest copy is kept
            buf.items.pop(old)
            self.counts["duplicates"] += 1
        self.counts["added"] += 1
        # ordered by (version, arrival): insert after every item with a smaller or equal version
        pos = len(buf.items)
        while pos > 0 and (buf.items[pos - 1].version, buf.items[pos - 1].seq) > (item.version, item.seq):
            pos -= 1
        buf.items.insert(pos, item)
        if len(buf.items) > self.capacity:
            del buf.items[:len(buf.items) - self.capacity]  # the oldest versions go first
            self.counts["evicted"] += 1

    @property
    def num_items(self) -> int:
        return sum(len(b.items) for b in self.buffers.values())

    @property
    def num_prompts(self) -> int:
        return len(self.buffers)

    # --- sampling
    def _pick(self, pool: list[int]) -> int:
        return pool.pop(int(torch.randint(len(pool), (1,), generator=self.g)))

    def _draw_prompt(self, online: bool) -> int:
        if online:
            if not self.online:  # out of online prompts: reuse this wave's (the authors' fallback)
                self.online, self.used_online = self.used_online, []
            key = self._pick(self.online)
            self.used_online.append(key)
            return key
        if not self.offline:
            self.offline = list(self.seen)
        return self._pick(self.offline)

    def _draw_items(self, buf: _PromptBuffer, k: int, online: bool) -> list[Item]:
        if online:
            cands = [it for it in buf.items if it.wave == buf.wave]
            if not cands:  # its wave's items were evicted: an off-policy draw instead
                return self._draw_items(buf, k, online=False)
            replace = len(cands) < k
            idx = (torch.randint(len(cands), (k,), generator=self.g) if replace
                   else torch.randperm(len(cands), generator=self.g)[:k])
        else:
            cands = buf.items
            score = torch.tensor([it.reward if self.priority == "reward" else float(it.version) for it in cands],
                                 dtype=torch.float64)
            probs = torch.softmax(self.inv_temp * score, 0)
            replace = len(cands) < k
            idx = torch.multinomial(probs, k, replacement=replace, generator=self.g)
        if replace:
            self.counts["with_replacement"] += 1
        return [cands[i] for i in idx.tolist()]

    def sample(self, n_prompts: int, k: int, generated_tokens: int | None = None) -> Experience:
        """A training batch of ``n_prompts`` groups of ``k`` responses (see the module docstring)."""
        if not self.buffers:
            raise ValueError("the replay buffer is empty")
        groups, n_online, wr0 = [], 0, self.counts["with_replacement"]
        for _ in range(n_prompts):
            online = bool(torch.rand(1, generator=self.g) < self.m) and bool(self.online or self.used_online)
            key = self._draw_prompt(online)
            buf = self.buffers[key]
            groups.append((key, buf.prompt_ids, self._draw_items(buf, k, online)))
            n_online += online
        exp = build_experience(groups, self.problems, self.pad_id, generated_tokens)
        exp.extras["replay"] = {"replay/on_policy_frac": n_online / n_prompts,
                                "replay/with_replacement": self.counts["with_replacement"] - wr0,
                                "replay/items": self.num_items, "replay/prompts": self.num_prompts}
        return exp

    # --- checkpoint
    def state_dict(self) -> dict:
        entries = [(key, it) for key in self.seen for it in self.buffers[key].items]
        return {"policy": "tba", "items": _pack_items(entries),
                "prompts": {key: list(self.buffers[key].prompt_ids) for key in self.seen},
                "prompt_wave": {key: self.buffers[key].wave for key in self.seen},
                "seen": list(self.seen), "online": list(self.online), "used_online": list(self.used_online),
                "offline": list(self.offline), "wave": self.wave, "seq": self.seq, "new_wave": self.new_wave,
                "counts": dict(self.counts), "generator": self.g.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {int(k): _PromptBuffer(tuple(v)) for k, v in state["prompts"].items()}
        for k, w in state["prompt_wave"].items():
            self.buffers[int(k)].wave = int(w)
        for key, item in _unpack_items(state["items"]):
            self.buffers[key].items.append(item)
        self.seen = [int(k) for k in state["seen"]]
        self.online, self.used_online = list(state["online"]), list(state["used_online"])
        self.offline = list(state["offline"])
        self.wave, self.seq, self.new_wave = int(state["wave"]), int(state["seq"]), bool(state["new_wave"])
        self.counts = dict(state["counts"])
        self.g.set_state(state["generator"])


class VarianceReplay:
    """TRL's GRPO-with-replay as a buffer policy (see the module docstring)."""

    def __init__(self, problems: list, capacity: int = 64, pad_id: int = 0, seed: int = 0):
        self.problems, self.capacity, self.pad_id = problems, capacity, pad_id
        self.index_of: dict[str, int] = {}
        for i, p in enumerate(problems):
            self.index_of.setdefault(p.prompt, i)
        self.g = torch.Generator().manual_seed(int(seed) % (2**63))
        self.groups: list[tuple[float, int, int, tuple[int, ...], list[Item]]] = []  # (score, seq, key, prompt, items)
        self.seq = 0
        self.counts = {"kept": 0, "replaced": 0, "with_replacement": 0}

    @staticmethod
    def score(rewards: torch.Tensor) -> float:
        return float((rewards - rewards.mean()).abs().sum())

    def mark_sync(self) -> None:
        pass

    def apply(self, exp: Experience) -> Experience:
        """Keep the fresh batch's varying groups; replace its zero-variance groups with kept ones."""
        rows = split_experience(exp, self.index_of)
        order = list(dict.fromkeys(exp.group.tolist()))
        fresh, flat = [], []
        for g in order:
            idx = torch.nonzero(exp.group == g).flatten().tolist()
            key, p_ids = rows[idx[0]][0], rows[idx[0]][1]
            items = [rows[i][2] for i in idx]
            fresh.append((key, p_ids, items, self.score(exp.rewards[idx])))
        for key, p_ids, items, s in fresh:  # TRL adds first, then samples
            if s > 0:
                self._keep(s, key, p_ids, items)
        dead = [j for j, f in enumerate(fresh) if f[3] == 0]
        stats = {"replay/replaced_groups": 0, "replay/with_replacement": 0, "replay/groups": len(self.groups)}
        if not dead or not self.groups:
            exp.extras["replay"] = stats
            return exp
        scores = torch.tensor([g[0] for g in self.groups], dtype=torch.float64)
        replace = len(self.groups) < len(dead)
        picks = torch.multinomial(scores / scores.sum(), len(dead), replacement=replace, generator=self.g).tolist()
        groups = [(key, p_ids, items) for key, p_ids, items, _ in fresh]
        weight = exp.extras.get("sample_weight")  # stale rows masked by runtime.stale_policy=mask
        row_weights = [weight[exp.group == g].tolist() if weight is not None else None for g in order]
        for j, p in zip(dead, picks):
            _, _, key, p_ids, items = self.groups[p]
            groups[j] = (key, p_ids, items)
            row_weights[j] = [1.0] * len(items)
        self.counts["replaced"] += len(dead)
        self.counts["with_replacement"] += int(replace)
        out = build_experience(groups, self.problems, self.pad_id, exp.rollout.num_generated_tokens)
        out.timings, out.extras = dict(exp.timings), {k: v for k, v in exp.extras.items()
                                                     if not isinstance(v, torch.Tensor)}
        if weight is not None:
            out.extras["sample_weight"] = torch.tensor([w for ws in row_weights for w in ws], dtype=weight.dtype)
        stats.update({"replay/replaced_groups": len(dead), "replay/with_replacement": int(replace)})
        out.extras["replay"] = stats
        return out

    def _keep(self, score: float, key: int, p_ids, items: list[Item]) -> None:
        entry = (score, self.seq, key, p_ids, [dataclasses.replace(it) for it in items])
        self.seq += 1
        if len(self.groups) < self.capacity:
            self.groups.append(entry)
        else:
            worst = min(range(len(self.groups)), key=lambda i: (self.groups[i][0], self.groups[i][1]))
            if score <= self.groups[worst][0]:
                return
            self.groups[worst] = entry
        self.counts["kept"] += 1

    @property
    def num_items(self) -> int:
        return sum(len(g[4]) for g in self.groups)

    def state_dict(self) -> dict:
        entries = [(slot, it) for slot, g in enumerate(self.groups) for it in g[4]]
        return {"policy": "variance", "items": _pack_items(entries),
                "groups": [(g[0], g[1], g[2], list(g[3])) for g in self.groups], "seq": self.seq,
                "counts": dict(self.counts), "generator": self.g.get_state()}

    def load_state_dict(self, state: dict) -> None:
        items: dict[int, list[Item]] = {}
        for slot, it in _unpack_items(state["items"]):
            items.setdefault(slot, []).append(it)
        self.groups = [(float(s), int(q), int(k), tuple(p), items.get(i, [])) for i, (s, q, k, p) in
                       enumerate(state["groups"])]
        self.seq, self.counts = int(state["seq"]), dict(state["counts"])
        self.g.set_state(state["generator"])


# ------------------------------------------------------------------------------------------------
# the experience source

class ReplaySource:
    """An experience source that trains from a replay buffer fed by another source's batches.

    ``inner`` is the :class:`~rlvr.experience.batch.OnPolicyQueue` (sync: one batch made in place
    per step) or the :class:`~rlvr.experience.async_source.AsyncSource` (rollout workers: threads or Ray
    actors). With the ``tba`` policy and rollout workers, :meth:`next_batch` takes every batch the
    workers have finished without waiting, and waits only until ``replay.initial_buffer_samples``
    responses have arrived (and at least one batch); the workers stay at most
    ``runtime.max_staleness`` batches ahead of the published weights (the async admission rule).

    The initial fill needs more batches than the admission window allows, while the weights do not
    change: each batch that arrives during the fill opens the window by one more slot (``offset``,
    added to every later learner step given to the pool, and checkpointed).
    """

    def __init__(self, config, inner, buffer, sampler):
        self.config, self.inner, self.buffer, self.sampler = config, inner, buffer, sampler
        self.policy = config.replay.policy
        self.n_prompts, self.k = config.rollout.prompts_per_step, config.rollout.group_size
        self.initial = config.replay.initial_buffer_samples
        self.pool = getattr(inner, "pool", None)  # rollout workers (None: in place)
        self.offset = 0  # admission slots opened by the initial fill (see the class docstring)
        self.step = 0

    # --- weights
    def publish_weights(self, model, policy_version: int, step: int) -> dict[str, float]:
        before = getattr(getattr(self.inner, "publisher", None), "version", None)
        self.step = step
        metrics = self.inner.publish_weights(model, policy_version, step + self.offset)
        after = getattr(getattr(self.inner, "publisher", None), "version", None)
        if self.pool is None or after != before:  # in place, every step is a sync
            self.buffer.mark_sync()
        return metrics

    # --- batches
    def next_batch(self, policy_version: int) -> Experience:
        if self.policy == "variance":
            exp = self.inner.next_batch(policy_version)
            runtime = exp.extras.get("runtime")
            out = self.buffer.apply(exp)
            return self._annotate(out, policy_version, runtime, 1)
        t_gen = t_score = 0.0
        tokens = batches = 0

        def take(exp):
            nonlocal t_gen, t_score, tokens, batches
            self.buffer.add(exp)
            t_gen += exp.timings.get("generate", 0.0)
            t_score += exp.timings.get("score", 0.0)
            tokens += exp.rollout.num_generated_tokens
            batches += 1

        if self.pool is None:  # in place: one fresh batch per step, more only for the initial fill
            take(self.inner.next_batch(policy_version))
            while self.buffer.counts["added"] < self.initial:
                take(self.inner.next_batch(policy_version))
        else:
            while True:  # everything the workers finished, without waiting
                self.pool.check_alive()
                got = self.pool.get(0.0)
                if got is None:
                    break
                take(got[1])
            deadline = time.perf_counter() + self.config.runtime.timeout_s
            while self.buffer.counts["added"] < max(1, self.initial):
                from rlvr.experience.staleness import RolloutTimeout

                left = deadline - time.perf_counter()
                if left <= 0:
                    raise RolloutTimeout(f"the replay buffer received {self.buffer.counts['added']} of "
                                         f"replay.initial_buffer_samples = {self.initial} responses in "
                                         f"runtime.timeout_s = {self.config.runtime.timeout_s:g} s")
                self.pool.check_alive()
                got = self.pool.get(min(left, 1.0))
                if got is not None:
                    take(got[1])
                    if self.buffer.counts["added"] < self.initial:  # same weights: admit one more batch
                        self.offset += 1
                        self.pool.publish(self.step + self.offset)
        exp = self.buffer.sample(self.n_prompts, self.k, generated_tokens=tokens)
        exp.timings = {"generate": t_gen, "score": t_score}
        return self._annotate(exp, policy_version, None, batches)

    def _annotate(self, exp: Experience, policy_version: int, runtime: dict | None, batches: int) -> Experience:
        staleness = policy_version - exp.rollout.versions
        rt = dict(runtime or {})
        rt.update({"staleness_mean": float(staleness.float().mean()), "staleness_max": int(staleness.max()),
                   "staleness_hist": staleness.tolist(), "replay/batches_in": batches,
                   **exp.extras.pop("replay", {})})
        rt.setdefault("samples_accepted", int(staleness.numel()))
        exp.extras["runtime"] = rt
        return exp

    # --- checkpoint
    def state_dict(self) -> dict:
        return {**self.inner.state_dict(), "replay": self.buffer.state_dict(), "replay_offset": self.offset}

    def load_state_dict(self, state: dict, step: int | None = None) -> None:
        inner = {k: v for k, v in state.items() if k not in ("replay", "replay_offset")}
        self.offset = int(state.get("replay_offset", 0))
        if step is None:
            self.inner.load_state_dict(inner)
        else:
            self.step = step
            self.inner.load_state_dict(inner, step + self.offset)
        if "replay" in state:
            self.buffer.load_state_dict(state["replay"])

    def close(self) -> None:
        self.inner.close()


def make_buffer(config, problems: list, pad_id: int):
    """The buffer ``config.replay`` describes, seeded from ``run.seed``."""
    rp = config.replay
    seed = config.run.seed * 1_000_003 + 424_242
    if rp.policy == "variance":
        return VarianceReplay(problems, rp.capacity, pad_id=pad_id, seed=seed)
    return ReplayBuffer(problems, rp.capacity, rp.on_policy_prob, rp.inv_temp, rp.priority, pad_id=pad_id, seed=seed)


def with_replay(config, source, tokenizer, sampler):
    """``source`` itself, or a :class:`ReplaySource` over it when ``replay.enabled``."""
    rp = getattr(config, "replay", None)
    if rp is None or not rp.enabled:
        return source
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return ReplaySource(config, source, make_buffer(config, sampler.problems, pad_id), sampler)
