"""Evaluation metrics as pure functions (no I/O, no model): pass@k, CoT-pass@k, maj@k, diversity.

Notation follows ``spec/algorithms.md`` section 18: a problem has ``n`` sampled completions of
which ``c`` are correct; ``k <= n``.

* :func:`pass_at_k`: the unbiased estimator of Chen et al. 2021 (Codex, arXiv 2107.03374, eq. 1),
  ``1 - C(n-c, k) / C(n, k)``, in its numerically stable product form.
* CoT-pass@k (arXiv 2506.14245) is the same estimator with ``c`` replaced by ``D``, the number of
  samples whose final answer is correct *and* whose chain of thought passes the chain verifier:
  call ``pass_at_k(n, D, k)``.
* :func:`majority_vote` / :func:`maj_at_k`: self-consistency (Wang et al. 2023). Tie rules:

  1. samples without an extractable answer (``None``) abstain: they never form a cluster;
  2. answers are clustered by exact equality of their (canonical) extracted answer;
  3. the largest cluster wins; among equally large clusters the one whose first member comes
     earliest wins (the RSA reference code's rule, ``evaluate_k_answers_math``);
  4. when every sample abstains there is no prediction and the vote counts as wrong.

  Because samples are i.i.d., "earliest first" is a uniformly random tie-break in expectation
  (tied clusters are equally large, so each is equally likely to appear first).
  With ``n > k`` samples, maj@k averages the vote over k-subsets of the n samples (each subset
  keeps the original sample order): all of them when there are few, else a seeded random draw.
* :func:`distinct_n`: distinct-n of Li et al. 2016 (arXiv 1510.03055): unique n-grams divided by
  all n-grams, pooled over a problem's samples.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Hashable, Sequence

__all__ = [
    "distinct_n",
    "maj_at_k",
    "majority_vote",
    "mean_over_problems",
    "pass_at_k",
    "summarize_samples",
]

#: maj@k enumerates every k-subset when there are at most this many, else samples this many.
MAX_SUBSETS = 2_000


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021, eq. 1).

    Stable product form (spec 18.1): 1 if ``n - c < k``, else
    ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``.

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_vote(answers: Sequence[Hashable | None]) -> int | None:
    """Index of the representative (first member) of the winning answer cluster, or ``None``.

    Tie rules in the module docstring: ``None`` abstains, largest cluster wins, ties go to the
    cluster that appears first. The winning cluster's correctness is that of its first member.
    """
    counts: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        counts[a] = counts.get(a, 0) + 1
        first.setdefault(a, i)
    if not counts:
        return None
    best = max(counts, key=lambda a: (counts[a], -first[a]))
    return first[best]


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int,
             seed: int = 0, max_subsets: int = MAX_SUBSETS) -> float:
    """maj@k for one problem: mean correctness of the majority vote over k-subsets of the samples.

    ``answers[i]`` is sample i's extracted answer (``None`` if none), ``correct[i]`` whether the
    verifier accepted it. All ``C(n, k)`` subsets are used when there are at most ``max_subsets``,
    otherwise ``max_subsets`` subsets drawn uniformly (seeded; the estimate is then unbiased but
    not exact). Subsets keep the original sample order, which matters only for tie-breaking.
    """
    n = len(answers)
    if len(correct) != n:
        raise ValueError("answers and correct must have the same length")
    if not (1 <= k <= n):
        raise ValueError(f"maj_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if math.comb(n, k) <= max_subsets:
        subsets = itertools.combinations(range(n), k)
    else:
        rng = random.Random(seed)
        subsets = (sorted(rng.sample(range(n), k)) for _ in range(max_subsets))
    total, count = 0.0, 0
    for subset in subsets:
        winner = majority_vote([answers[i] for i in subset])
        total += float(winner is not None and bool(correct[subset[winner]]))
        count += 1
    return total / count


def distinct_n(sequences: Sequence[Sequence[Hashable]], n: int = 2) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / total n-grams, pooled over ``sequences``.

    Sequences shorter than ``n`` contribute no n-gram; with no n-gram at all the score is 0.
    """
    if n < 1:
        raise ValueError(f"distinct_n needs n >= 1, got {n}")
    grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_over_problems(values: Sequence[float]) -> float:
    """The plain mean (0 for an empty list): every metric is averaged over problems this way."""
    return sum(values) / len(values) if values else 0.0


def summarize_samples(rows: Sequence[dict], ks: Sequence[int], seed: int = 0) -> dict:
    """Every ``rlvr eval --k`` metric from per-problem sample rows, averaged over problems.

    Each row holds ``correct`` (0/1 per sample), ``answers`` (extracted answers, ``None`` when
    absent), ``completions``, ``lengths`` (tokens), ``distinct_2``, ``greedy_correct`` and, for
    tasks with a chain verifier, ``cot`` (0/1 per sample: right answer *and* right chain).

    Returns ``greedy_accuracy``; ``pass@k``, ``maj@k`` and (when rows have ``cot``) ``cot_pass@k``
    for each k; ``mean_accuracy`` (mean@k = c/n, the same for every k); ``response_length``;
    ``distinct_answers`` and ``distinct_completions`` (per problem, out of n); ``distinct_2``; and,
    when rows have ``finish`` (a finish reason per sample), ``truncated_frac``: the share of samples
    that hit ``max_new_tokens`` before a stop token.
    """
    if not rows:
        raise ValueError("no samples to summarize")
    n = min(len(r["correct"]) for r in rows)
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"k = {bad} needs 1 <= k <= n = {n} samples per problem")
    out: dict = {"num_problems": len(rows), "n": n,
                 "greedy_accuracy": mean_over_problems([float(r["greedy_correct"]) for r in rows]),
                 "mean_accuracy": mean_over_problems([sum(r["correct"]) / len(r["correct"]) for r in rows])}
    has_cot = all(r.get("cot") is not None for r in rows)
    for k in ks:
        out[f"pass@{k}"] = mean_over_problems([pass_at_k(len(r["correct"]), sum(r["correct"]), k) for r in rows])
        if has_cot:
            out[f"cot_pass@{k}"] = mean_over_problems([pass_at_k(len(r["cot"]), sum(r["cot"]), k) for r in rows])
        out[f"maj@{k}"] = mean_over_problems([maj_at_k(r["answers"], r["correct"], k, seed=seed + i)
                                              for i, r in enumerate(rows)])
    out["response_length"] = mean_over_problems([sum(r["lengths"]) / len(r["lengths"]) for r in rows])
    out["distinct_answers"] = mean_over_problems([float(len({a for a in r["answers"] if a is not None}))
                                                  for r in rows])
    out["distinct_completions"] = mean_over_problems([float(len(set(r["completions"]))) for r in rows])
    out["distinct_2"] = mean_over_problems([float(r["distinct_2"]) for r in rows])
    if all("finish" in r for r in rows):  # rows written before finish reasons were recorded have none
        out["truncated_frac"] = mean_over_problems([sum(f == "length" for f in r["finish"]) / len(r["finish"])
                                                    for r in rows])
    return out
