"""Which KL (estimator, placement) pairs give the true gradient of the sequence-level reverse KL?

Exact enumeration on a tiny tabular autoregressive policy (spec algorithms.md section 5.3; Shah et
al., "A Comedy of Estimators", arXiv 2512.21852; Tang & Munos, arXiv 2506.09477).

Setting: vocabulary ``V``, fixed length ``L``; the policy has one free logit vector per prefix
(state), ``pi_theta(a | s) = softmax(theta[s])_a``; the reference has fixed random logits.  All
``V**L`` sequences are enumerated, so every expectation is exact (no sampling noise).

Target: ``grad_theta KL(pi_theta || pi_ref)`` over whole sequences (autograd on the exact sum).

Placements, with per-token estimates ``k_t = kl_penalty(lp_t, lp_ref_t, kind)``
(:func:`rlvr.algorithms.kl_penalty`, i.e. the library code is what is being checked):

* ``reward``: the estimate is a detached penalty subtracted from the reward; the gradient is the
  REINFORCE score-function term ``E[ sum_t grad lp_t * C_t ]`` with ``C_t = sum_{t'} sg(k_t')``
  (penalty credited to the whole sequence; ``credit="to_go"`` uses ``sum_{t' >= t}``, which has
  the same expectation).
* ``loss``: ``E[ sum_t grad k_t ]`` (the estimate differentiated in the loss, samples fixed).
* ``reward+loss``: both terms (the paper's control for k3).

``python -m rlvr.algorithms.kl_table`` prints the Markdown table.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .kl import kl_params, kl_penalty

ESTIMATORS = ("k1", "k2", "k3", "abs", "k1+", "k2+", "k3+", "abs+")
PLACEMENTS = ("reward", "loss", "reward+loss")

# Expected results (spec 5.3, plus derivations for abs and the straight-through variants:
# "reward" only uses the forward VALUE, "loss" only the GRADIENT of the estimator).
EXPECTED_UNBIASED = {
    ("k1", "reward"): True,  # spec 5.3: unbiased
    ("k1", "loss"): False,  # spec 5.3: expectation 0
    ("k1", "reward+loss"): True,  # = k1 in reward + 0
    ("k2", "reward"): False,
    ("k2", "loss"): False,  # spec 5.3: per-state partial gradient, biased at sequence level
    ("k2", "reward+loss"): False,  # gradient of E[sum k2], not of KL
    ("k3", "reward"): False,  # spec 5.3
    ("k3", "loss"): False,  # spec 5.3: forward-KL gradient
    ("k3", "reward+loss"): True,  # spec 5.3: = grad E[sum k3] = grad KL
    ("abs", "reward"): False,
    ("abs", "loss"): False,
    ("abs", "reward+loss"): False,
    ("k1+", "reward"): True,  # forward value is k1
    ("k1+", "loss"): False,  # gradient is k2's
    ("k1+", "reward+loss"): False,  # k1 score term + k2 pathwise term E[sum u grad lp] != 0
    ("k2+", "reward"): False,
    ("k2+", "loss"): False,
    ("k2+", "reward+loss"): False,
    ("k3+", "reward"): False,
    ("k3+", "loss"): False,
    ("k3+", "reward+loss"): False,
    ("abs+", "reward"): False,  # forward value |u|
    ("abs+", "loss"): False,  # gradient is k2's
    ("abs+", "reward+loss"): False,
}


@dataclass(frozen=True)
class KLRow:
    estimator: str
    placement: str
    unbiased: bool
    rel_error: float  # |g - g_true| / |g_true|


def _prefix_index(vocab: int, length: int) -> dict[tuple, int]:
    idx = {}
    for t in range(length):
        for p in itertools.product(range(vocab), repeat=t):
            idx[p] = len(idx)
    return idx


def _token_logprobs(logits: torch.Tensor, seqs: list[tuple], pidx: dict[tuple, int]) -> torch.Tensor:
    """``[N, L]`` log-probabilities of every token of every enumerated sequence."""
    logp_table = torch.log_softmax(logits, dim=-1)  # [S, V]
    rows = []
    for y in seqs:
        rows.append(torch.stack([logp_table[pidx[y[:t]], y[t]] for t in range(len(y))]))
    return torch.stack(rows)


def kl_gradient_table(
    vocab: int = 3, length: int = 3, seed: int = 0, credit: str = "sequence", scale: float = 0.5,
    estimators=ESTIMATORS, **kl_hp,
) -> list[KLRow]:
    """Compute every (estimator, placement) expected gradient exactly and compare to the truth.

    Policy and reference logits are ``scale * N(0, 1)``.  Keep ``scale`` small: with large logit
    gaps verl's clamp of k3 at 10 (reproduced by :func:`kl_penalty`) becomes active and makes even
    "k3 in reward+loss" biased (e.g. vocab 3, length 3, scale 1.0); ``kl_hp`` (e.g.
    ``value_clamp=None``) are passed to the estimators that take them (:func:`kl_params`), which is
    how :func:`clamp_table` shows the clamp's effect.
    """
    if credit not in ("sequence", "to_go"):
        raise ValueError("credit must be 'sequence' or 'to_go'")
    g = torch.Generator().manual_seed(seed)
    pidx = _prefix_index(vocab, length)
    n_states = len(pidx)
    theta0 = scale * torch.randn(n_states, vocab, generator=g, dtype=torch.float64)
    ref_logits = scale * torch.randn(n_states, vocab, generator=g, dtype=torch.float64)
    seqs = list(itertools.product(range(vocab), repeat=length))
    lp_ref = _token_logprobs(ref_logits, seqs, pidx)

    def grad_of(fn) -> torch.Tensor:
        theta = theta0.clone().requires_grad_(True)
        lp = _token_logprobs(theta, seqs, pidx)
        (gr,) = torch.autograd.grad(fn(lp), theta)
        return gr

    # truth: exact sequence-level reverse KL
    def true_kl(lp):
        seq_lp = lp.sum(-1)
        return (seq_lp.exp() * (seq_lp - lp_ref.sum(-1))).sum()

    g_true = grad_of(true_kl)
    norm = g_true.norm().item()

    rows = []
    for est in estimators:
        hp = kl_params(est, kl_hp)
        for place in PLACEMENTS:

            def surrogate(lp, est=est, place=place, hp=hp):
                prob = lp.sum(-1).exp().detach()  # sampling distribution (not differentiated)
                k = kl_penalty(lp, lp_ref, est, **hp)  # [N, L]
                total = torch.zeros((), dtype=lp.dtype)
                if "reward" in place:
                    kd = k.detach()
                    if credit == "sequence":
                        c = kd.sum(-1, keepdim=True).expand_as(kd)
                    else:
                        c = kd.flip(-1).cumsum(-1).flip(-1)
                    total = total + (prob.unsqueeze(-1) * lp * c).sum()
                if "loss" in place:
                    total = total + (prob.unsqueeze(-1) * k).sum()
                return total

            g_est = grad_of(surrogate)
            rel = (g_est - g_true).norm().item() / max(norm, 1e-300)
            rows.append(KLRow(est, place, rel < 1e-9, rel))
    return rows


def to_markdown(rows: list[KLRow]) -> str:
    by = {(r.estimator, r.placement): r for r in rows}
    ests = list(dict.fromkeys(r.estimator for r in rows))
    places = list(dict.fromkeys(r.placement for r in rows))
    lines = ["| estimator | " + " | ".join(f"in {p}" for p in places) + " |"]
    lines.append("|---|" + "---|" * len(places))
    for e in ests:
        cells = []
        for p in places:
            r = by[(e, p)]
            cells.append("unbiased" if r.unbiased else f"biased (rel. err {r.rel_error:.2g})")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: A setting in which some tokens' k3 exceeds 10, so the default value clamp is active.
CLAMP_CASE = dict(vocab=3, length=3, seed=0, scale=4.0)


def clamp_table(**setting) -> tuple[list[KLRow], list[KLRow], float]:
    """k3 / k3+ rows with verl's clamps on (default) and off (``value_clamp=None``,
    ``log_ratio_clamp=None``), in a setting where k3 exceeds 10 on some token (default
    :data:`CLAMP_CASE`), and the share of sequence probability mass with a clamped token."""
    setting = {**CLAMP_CASE, **setting}
    on = kl_gradient_table(estimators=("k3", "k3+"), **setting)
    off = kl_gradient_table(estimators=("k3", "k3+"), value_clamp=None, log_ratio_clamp=None, **setting)
    return on, off, clamped_mass(**setting)


def clamped_mass(vocab: int, length: int, seed: int, scale: float) -> float:
    """Probability (under pi_theta) of a sequence having a token whose unclamped k3 exceeds 10."""
    g = torch.Generator().manual_seed(seed)
    pidx = _prefix_index(vocab, length)
    theta = scale * torch.randn(len(pidx), vocab, generator=g, dtype=torch.float64)
    ref = scale * torch.randn(len(pidx), vocab, generator=g, dtype=torch.float64)
    seqs = list(itertools.product(range(vocab), repeat=length))
    lp, lp_ref = _token_logprobs(theta, seqs, pidx), _token_logprobs(ref, seqs, pidx)
    k = kl_penalty(lp, lp_ref, "k3", value_clamp=None, log_ratio_clamp=None)
    return float((lp.sum(-1).exp() * (k > 10).any(-1)).sum())


def main() -> None:
    rows = kl_gradient_table()
    print("Expected gradient vs true gradient of the sequence-level reverse KL(pi || pi_ref)")
    print("(exact enumeration, vocab 3, length 3, logits 0.5*N(0,1), on-policy samples)\n")
    print(to_markdown(rows))
    on, off, mass = clamp_table()
    c = CLAMP_CASE
    print(f"\nWith large logit gaps (logits {c['scale']:g}*N(0,1)) k3 exceeds verl's value clamp of 10 on "
          f"sequences holding {100 * mass:.1f}% of the probability mass; k3 in reward+loss is then biased "
          "with the clamp (kl.value_clamp=10, the default) and unbiased without it (kl.value_clamp=null):\n")
    print("clamp on (kl.value_clamp: 10, kl.log_ratio_clamp: 20)\n" + to_markdown(on))
    print("\nclamp off (kl.value_clamp: null, kl.log_ratio_clamp: null)\n" + to_markdown(off))


if __name__ == "__main__":
    main()
