"""pass@k, maj@k and diversity metrics against brute-force enumeration and closed forms."""

import itertools
import math
from collections import Counter

import pytest

from rlvr.eval.metrics import distinct_n, maj_at_k, majority_vote, pass_at_k, summarize_samples


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (c of them correct) holding at least one correct sample."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_enumeration_over_all_k_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edge_cases():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(5, 1, 5) == 1.0 and pass_at_k(5, 0, 5) == 0.0  # n = k: "any correct"
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c/n
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)  # large n stays stable
    for bad in [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.8])
def test_pass_at_k_is_unbiased_for_any_of_k_iid_samples(p):
    """E_{c ~ Bin(n, p)}[pass@k(n, c, k)] = 1 - (1 - p)^k exactly (spec 18.1)."""
    n = 12
    for k in (1, 3, 7, 12):
        expected = sum(math.comb(n, c) * p**c * (1 - p) ** (n - c) * pass_at_k(n, c, k) for c in range(n + 1))
        assert expected == pytest.approx(1 - (1 - p) ** k, abs=1e-12)


def oracle_vote(answers):
    """Independent majority rule: most frequent non-None answer; ties to the earliest first occurrence."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    for i, a in enumerate(answers):
        if a is not None and counts[a] == top:
            return i


def test_majority_vote_tie_rules():
    assert majority_vote(["7", "8", "8", "7"]) == 0  # tie: the cluster seen first wins
    assert majority_vote(["8", "7", "7", "8"]) == 0
    assert majority_vote(["1", "2", "2"]) == 1  # a strict majority beats the earlier answer
    assert majority_vote([None, None, "3"]) == 2  # samples without an answer abstain
    assert majority_vote([None, "4", "5"]) == 1
    assert majority_vote([None, None]) is None and majority_vote([]) is None


def test_maj_at_k_matches_enumeration_with_an_independent_vote():
    answers = ["1", "2", None, "1", "3", "2", "2", "1"]
    correct = [a == "1" for a in answers]
    for k in range(1, len(answers) + 1):
        subsets = list(itertools.combinations(range(len(answers)), k))
        wins = []
        for s in subsets:
            w = oracle_vote([answers[i] for i in s])
            wins.append(w is not None and correct[s[w]])
        assert maj_at_k(answers, correct, k) == pytest.approx(sum(wins) / len(subsets)), k


def test_maj_at_k_closed_forms():
    # k = 1: the share of answered samples that are right (abstentions count as wrong)
    answers, correct = ["a", "b", None, "a"], [True, False, False, True]
    assert maj_at_k(answers, correct, 1) == pytest.approx(0.5)
    # k = n: one vote over everything; a tie between one right and one wrong goes to the first
    assert maj_at_k(["a", "b"], [True, False], 2) == 1.0
    assert maj_at_k(["b", "a"], [False, True], 2) == 0.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0


def test_maj_at_k_sampled_subsets_estimate_the_exact_value():
    answers = [str(i % 3) for i in range(14)]
    correct = [a == "0" for a in answers]
    exact = maj_at_k(answers, correct, 5)  # C(14, 5) = 2002 > MAX_SUBSETS: the default samples subsets
    exact_enum = maj_at_k(answers, correct, 5, max_subsets=10_000)
    sampled = maj_at_k(answers, correct, 5, max_subsets=1_500, seed=3)
    assert sampled == pytest.approx(exact_enum, abs=0.05)
    assert exact == pytest.approx(exact_enum, abs=0.05)


def test_distinct_n():
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert distinct_n([[1, 2], [1, 2]], 2) == pytest.approx(1 / 2)  # pooled over samples
    assert distinct_n([[1], []], 2) == 0.0
    assert distinct_n(["abc", "abd"], 1) == pytest.approx(4 / 6)


def test_summarize_samples_on_hand_made_rows():
    rows = [
        {"correct": [1, 0, 0, 0], "cot": [1, 0, 0, 0], "answers": ["5", "6", "6", None],
         "completions": ["5", "6", "6", "x"], "lengths": [2, 2, 2, 2], "distinct_2": 0.5, "greedy_correct": 1},
        {"correct": [0, 0, 0, 0], "cot": [0, 0, 0, 0], "answers": [None] * 4,
         "completions": ["a", "a", "a", "a"], "lengths": [1, 3, 1, 3], "distinct_2": 0.0, "greedy_correct": 0},
    ]
    s = summarize_samples(rows, [1, 2, 4])
    assert s["num_problems"] == 2 and s["n"] == 4
    assert s["greedy_accuracy"] == 0.5
    assert s["mean_accuracy"] == pytest.approx(0.125)
    assert s["pass@1"] == pytest.approx(0.125) and s["pass@4"] == pytest.approx(0.5)
    assert s["pass@2"] == pytest.approx(0.5 * brute_pass_at_k(4, 1, 2))
    assert s["cot_pass@4"] == pytest.approx(0.5)
    assert s["maj@4"] == 0.0  # "6" beats the right "5"
    assert s["distinct_answers"] == pytest.approx(1.0) and s["distinct_completions"] == pytest.approx(2.0)
    assert s["response_length"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="k"):
        summarize_samples(rows, [8])
