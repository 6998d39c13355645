"""When a row's forward/backward may be skipped: its advantages are all zero (the rule and its proof).

In GRPO-style estimators a group whose G rewards are all equal (every completion right, or every one
wrong) has advantage exactly 0 on every row; on the default recipe that is a third to a half of the
batch once the policy is half-competent. For a policy loss in
:data:`rlvr.algorithms.ZERO_AT_ZERO_ADVANTAGE_LOSSES` the loss of such a row is ``0 * f(rho)`` with
``f`` bounded (the log-ratio is clamped), i.e. exactly 0 with exactly zero gradient, and no batch
statistic couples it to the other rows. The minibatch loss is ``sum_rows / N`` with the normaliser
``N`` (``batch_num_tokens``, ``batch_num_seqs``, ``norm_constant``) counted over the *whole*
minibatch, which the learner passes to every micro-batch anyway. So leaving the row out of the forward
and backward changes no loss value and no gradient, beyond the float reassociation of a smaller GEMM
(tested: ``tests/train/test_zero_advantage.py`` compares parameters after an update with and without
the skip). AdamW then steps on the same gradient; a minibatch with no row left steps on zero gradients
(not on missing ones, which AdamW would skip), as the full computation would.

What it changes: the monitoring metrics of the policy loss (``ratio_*``, ``approx_kl``, ``ppo_kl``,
``clip_frac``, ``entropy``, ``entropy_token_mean``) are means over the rows that were trained; the
metric ``trained_rows_frac`` says how many those were. Never skipped (the rule returns the reason):
``trainer.skip_zero_advantage=never``; a loss outside the set (``clip_cov``/``kl_cov`` use batch
covariances, the group objectives ``real``/``rover``/``tb`` do not factor through the advantage); an
entropy bonus (``entropy_coef > 0`` or an entropy target: its gradient does not vanish with ``A``); a
KL term in the loss; any token weight (OPSM, top-entropy, STEER: some select tokens by batch
statistics); an aggregation not built in (a user's may normalise by the rows it is given).
"""

from __future__ import annotations

import torch

#: The built-in aggregations: each normalises by the counts the learner passes (whole minibatch).
COUNTED_AGGREGATIONS = frozenset({"token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                                  "seq-mean-token-sum-norm"})


def skip_zero_advantage(*, setting: str, policy_loss: str, zero_at_zero_advantage: bool, entropy_coef: float,
                        entropy_target: float | None, kl_placement: str, token_weights: list[str],
                        loss_agg_mode: str) -> tuple[bool, str]:
    """``(skip, reason)``: whether rows whose advantages are all zero may be left out of the training
    forward/backward (the module docstring proves it exact); ``reason`` says why not, or what held."""
    if setting != "auto":
        return False, f"trainer.skip_zero_advantage = {setting}"
    if not zero_at_zero_advantage:
        return False, f"policy loss {policy_loss!r} is not in ZERO_AT_ZERO_ADVANTAGE_LOSSES"
    if entropy_coef > 0 or entropy_target is not None:
        return False, "an entropy bonus has a gradient on every row"
    if kl_placement == "loss":
        return False, "a KL term in the loss has a gradient on every row"
    if token_weights:
        return False, f"token weights ({', '.join(token_weights)}) may select tokens by batch statistics"
    if loss_agg_mode not in COUNTED_AGGREGATIONS:
        return False, f"loss aggregation {loss_agg_mode!r} is not built in (it may normalise by its own rows)"
    return True, f"{policy_loss} has zero gradient at zero advantage; no entropy bonus, KL loss or token weight"


def rows_with_advantage(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: the rows with at least one valid token of non-zero advantage (the rows to train)."""
    return ((advantages != 0) & (mask != 0)).any(dim=-1)
