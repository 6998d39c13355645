"""Held-out evaluation: greedy accuracy and the mean sampled reward; n samples per problem for pass@k."""

from __future__ import annotations

import os

import torch

from rlvr.rollout.base import SamplingParams
from rlvr.tasks.base import score


def evaluate(engine, task, problems: list, temperature: float, top_p: float, max_new_tokens: int,
             samples_per_problem: int, seed: int = 1234, episodes=None) -> dict[str, float]:
    """Greedy exact-match accuracy and mean reward of sampled completions on ``problems``, plus the
    greedy and sampled mean of every other reward component (``greedy_<name>``, ``sampled_<name>``).

    Sampling uses its own seeded RNG stream (the training RNG is left untouched), so the number
    is reproducible and comparable before and after training. ``episodes``
    (:class:`rlvr.rollout.episodes.Episodes`): each completion is a multi-turn episode with its environment
    (``max_new_tokens`` per turn); the task's verifier reads the whole transcript, and the episodes' summed
    turn rewards are ``greedy_env_reward`` / ``sampled_env_reward`` (with ``sampled_turns``).
    """
    from rlvr.rollout.hf import seeded_generation

    prompts = [p.prompt for p in problems]
    greedy_params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens, n=1)
    sampled_params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                    n=samples_per_problem)
    with seeded_generation(seed):
        if episodes is None:
            greedy = engine.generate(prompts, greedy_params)
            sampled = engine.generate(prompts, sampled_params)
        else:
            greedy = episodes.rollout(engine, task, problems, greedy_params)
            sampled = episodes.rollout(engine, task, problems, sampled_params)
    g = score(task, problems, greedy.texts)
    rows = [problems[i] for i in sampled.prompt_index.tolist()]
    s = score(task, rows, sampled.texts)
    if episodes is not None:  # the training reward (the turn rewards) and the environment's judgement
        from rlvr.rollout.episodes import env_correct

        for out_, r in ((g, greedy), (s, sampled)):
            out_["env_reward"] = torch.tensor([sum(x) for x in r.extras["turn_rewards"]], dtype=torch.float32)
            out_["turns"] = torch.tensor(r.extras["turns"], dtype=torch.float32)
            out_["reward"] = out_["env_reward"]
            if (judged := env_correct(r)) is not None:
                out_["correct"] = judged
    out = {
        "greedy_accuracy": float(g["correct"].mean()),
        "sampled_reward": float(s["reward"].mean()),
        "sampled_accuracy": float(s["correct"].mean()),
        "response_length": float(sampled.completion_mask.sum(-1).float().mean()),
        # shares of completions that hit max_new_tokens before a stop token (finish reason "length")
        "truncated_frac": _share_length(sampled.finish_reason),
        "greedy_truncated_frac": _share_length(greedy.finish_reason),
    }
    if episodes is not None:
        out.update(_by_difficulty(greedy, g["correct"], "greedy") | _by_difficulty(sampled, s["correct"], "sampled"))
    for name in g:  # every other verifier component (multi-objective tasks): greedy_<c>, sampled_<c>
        if name not in ("reward", "correct") and name in s:
            out[f"greedy_{name}"] = float(g[name].nanmean())
            out[f"sampled_{name}"] = float(s[name].nanmean())
    return out


def _by_difficulty(rollout, correct: torch.Tensor, prefix: str) -> dict[str, float]:
    """Episodes' calls (the environment's ``calls``, else the observations appended) overall, and calls and accuracy
    per difficulty level where the environment names one (``<prefix>_calls/<level>``,
    ``<prefix>_accuracy/<level>``, ``<prefix>_share/<level>``)."""
    x = rollout.extras
    calls = torch.tensor([float(i.get("calls", o)) for i, o in zip(x["final_info"], x["observations"])])
    out = {f"{prefix}_calls": float(calls.mean())}
    levels = x.get("difficulty")
    for level in sorted(set(levels or ())):
        rows = torch.tensor([d == level for d in levels])
        out[f"{prefix}_calls/{level}"] = float(calls[rows].mean())
        out[f"{prefix}_accuracy/{level}"] = float(correct[rows].float().mean())
        out[f"{prefix}_share/{level}"] = float(rows.float().mean())
    return out


def _share_length(finish: list[str]) -> float:
    return sum(f == "length" for f in finish) / len(finish) if finish else 0.0


# ------------------------------------------------------------------------------------------------
# n samples per problem, written incrementally (``rlvr eval --k``)

SAMPLES_FILE = "samples.jsonl"
META_FILE = "meta.json"


def sample_eval_rows(engine, task, problems: list, out_dir, n: int, temperature: float, top_p: float,
                     max_new_tokens: int, seed: int, batch_problems: int = 32, meta: dict | None = None,
                     progress: bool = False, episodes=None) -> list[dict]:
    """One greedy and ``n`` sampled completions per problem, as per-problem rows (resumable).

    Rows are appended to ``out_dir/samples.jsonl`` one batch of ``batch_problems`` problems at a
    time. A rerun reads the file, keeps the batches that are complete, and samples only the
    rest; each batch is sampled under its own seed (``seed`` and the batch's first index), so the
    result does not depend on where a run was interrupted. ``meta`` (what shapes the samples:
    checkpoint, task, sampling) is stored in ``out_dir/meta.json``; a rerun with different
    ``meta`` raises instead of mixing samples. Asking for more problems than a previous run
    extends it (problems are a prefix-stable list). ``episodes`` (:class:`rlvr.rollout.episodes.Episodes`): each
    completion is a multi-turn episode (its text the whole transcript, rows add ``transcripts`` and
    ``env_rewards``); pass@k is then over episodes.
    """
    import json
    from pathlib import Path

    from tqdm.auto import tqdm

    from rlvr.utils import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {**(meta or {}), "n": n, "temperature": temperature, "top_p": top_p,
            "max_new_tokens": max_new_tokens, "seed": seed, "batch_problems": batch_problems}
    if episodes is not None:
        meta["env"] = {"name": episodes.name, "options": episodes.options, "max_turns": episodes.limits.max_turns,
                       "max_total_tokens": episodes.limits.max_total_tokens}
    _check_meta(out_dir / META_FILE, meta)
    atomic_write_text(out_dir / META_FILE, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    done = _load_complete_batches(out_dir / SAMPLES_FILE, problems, batch_problems)
    starts = [s for s in range(0, len(problems), batch_problems) if s not in done]
    bar = tqdm(total=len(problems), initial=sum(len(rows) for rows in done.values()),
               desc="eval (problems)", disable=not progress, dynamic_ncols=True)
    for start in starts:
        batch = problems[start:start + batch_problems]
        rows = _sample_batch(engine, task, batch, start, n, temperature, top_p, max_new_tokens, seed, episodes)
        with open(out_dir / SAMPLES_FILE, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        done[start] = rows
        bar.update(len(batch))
    bar.close()
    return [row for s in sorted(done) for row in done[s]][: len(problems)]


def _sample_batch(engine, task, batch: list, start: int, n: int, temperature: float, top_p: float,
                  max_new_tokens: int, seed: int, episodes=None) -> list[dict]:
    from rlvr.eval.metrics import distinct_n
    from rlvr.tasks.base import SupportsChainVerifier

    from rlvr.rollout.hf import seeded_generation

    prompts = [p.prompt for p in batch]
    greedy_params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens, n=1)
    sampled_params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, n=n)
    with seeded_generation(seed * 1_000_003 + start):
        if episodes is None:
            greedy = engine.generate(prompts, greedy_params)
            sampled = engine.generate(prompts, sampled_params)
        else:  # multi-turn: each completion an episode with its environment
            greedy = episodes.rollout(engine, task, batch, greedy_params)
            sampled = episodes.rollout(engine, task, batch, sampled_params)
    chain = isinstance(task, SupportsChainVerifier)
    judged = greedy_judged = None  # multi-turn: the environment's judgement of each episode, where it gives one
    if episodes is not None:
        from rlvr.rollout.episodes import env_correct

        judged, greedy_judged = env_correct(sampled), env_correct(greedy)
    lengths = sampled.completion_mask.sum(-1).tolist()
    ids = [row[:L] for row, L in zip(sampled.completion_ids.tolist(), lengths)]
    rows = []
    for i, problem in enumerate(batch):
        idx = [j for j, p in enumerate(sampled.prompt_index.tolist()) if p == i]
        texts = [sampled.texts[j] for j in idx]
        scores = [task.score(problem, t) for t in texts]
        correct = [int(s["correct"] > 0) for s in scores] if judged is None else [int(judged[j] > 0) for j in idx]
        rows.append({
            "index": start + i, "prompt": problem.prompt, "answer": problem.answer,
            "greedy": greedy.texts[i], "greedy_correct": int(task.score(problem, greedy.texts[i])["correct"] > 0) if greedy_judged is None
            else int(greedy_judged[i] > 0),
            "greedy_finish": greedy.finish_reason[i], "finish": [sampled.finish_reason[j] for j in idx],
            "completions": texts, "answers": [task.extract_answer(t) for t in texts], "correct": correct,
            "cot": [int(c and bool(task.verify_chain(problem, t))) for c, t in zip(correct, texts)] if chain else None,
            "lengths": [lengths[j] for j in idx], "distinct_2": distinct_n([ids[j] for j in idx], 2),
        })
        if episodes is not None:
            rows[-1].update(greedy_transcript=greedy.extras["transcript"][i],
                            transcripts=[sampled.extras["transcript"][j] for j in idx],
                            env_rewards=[sum(sampled.extras["turn_rewards"][j]) for j in idx])
    return rows


def _check_meta(path, meta: dict) -> None:
    import json

    if not path.exists():
        return
    old = json.loads(path.read_text())
    diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
    if diff:
        raise ValueError(f"{path.parent}: earlier samples were made with other settings ({', '.join(diff)}); "
                         "use another --out folder or delete this one")


def _load_complete_batches(path, problems: list, batch_problems: int) -> dict[int, list[dict]]:
    """Rows already on disk, by batch start; incomplete batches and torn lines are dropped (and the
    file is rewritten without them). A row whose prompt is not the expected problem raises."""
    import json

    from rlvr.utils import atomic_write_text, read_jsonl

    rows = read_jsonl(path)
    by_start: dict[int, dict[int, dict]] = {}
    for r in rows:
        i = int(r["index"])
        if i < len(problems) and r["prompt"] != problems[i].prompt:
            raise ValueError(f"{path}: row {i} is for prompt {r['prompt']!r}, not {problems[i].prompt!r}; "
                             "the task or its options changed: use another --out folder")
        by_start.setdefault(i - i % batch_problems, {})[i] = r
    done = {}
    for start, got in by_start.items():
        want = range(start, min(start + batch_problems, max(len(problems), max(got) + 1)))
        if all(i in got for i in want):
            done[start] = [got[i] for i in want]
    kept = [r for s in sorted(done) for r in done[s]]
    if path.exists() and len(kept) != len(path.read_text().splitlines()):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return {s: [r for r in rs if r["index"] < len(problems)] for s, rs in done.items()
            if s < len(problems)}
