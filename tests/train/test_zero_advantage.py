"""Rows with zero advantage skip the training forward/backward (issue 14.7: work that is not needed):
the rule, the losses it trusts, and the same update as training every row."""

import copy

import pytest
import torch

from rlvr import algorithms as A
from rlvr.algorithms.aggregation import aggregate_loss
from rlvr.train.zero_advantage import COUNTED_AGGREGATIONS, rows_with_advantage, skip_zero_advantage

RULE = dict(setting="auto", policy_loss="vanilla", zero_at_zero_advantage=True, entropy_coef=0.0,
            entropy_target=None, kl_placement="none", token_weights=[], loss_agg_mode="token-mean")


def test_the_rule_skips_only_when_every_condition_holds():
    assert skip_zero_advantage(**RULE)[0]
    for change, word in [({"setting": "never"}, "never"), ({"zero_at_zero_advantage": False}, "ZERO_AT"),
                         ({"entropy_coef": 0.01}, "entropy"), ({"entropy_target": 0.5}, "entropy"),
                         ({"kl_placement": "loss"}, "KL"), ({"token_weights": ["opsm"]}, "opsm"),
                         ({"loss_agg_mode": "my-agg"}, "my-agg")]:
        skip, reason = skip_zero_advantage(**{**RULE, **change})
        assert not skip and word in reason, change
    assert skip_zero_advantage(**{**RULE, "kl_placement": "reward"})[0]  # a KL in the reward is in A already


def test_the_marked_losses_are_the_ones_without_batch_coupling():
    assert {"vanilla", "ppo", "gspo", "cispo", "gpg", "geo_mean"} <= A.ZERO_AT_ZERO_ADVANTAGE_LOSSES
    for name in ("clip_cov", "kl_cov", "real", "rover", "tb"):
        assert name not in A.ZERO_AT_ZERO_ADVANTAGE_LOSSES


def test_rows_with_advantage_sees_any_valid_nonzero_token():
    adv = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1]])  # row 2's only non-zero is padding
    assert rows_with_advantage(adv, mask).tolist() == [False, True, False]


@pytest.mark.parametrize("name", sorted(A.ZERO_AT_ZERO_ADVANTAGE_LOSSES))
@pytest.mark.parametrize("agg", sorted(COUNTED_AGGREGATIONS))
def test_a_marked_loss_on_the_trained_rows_is_the_loss_on_all_rows(name, agg):
    """The property the skip relies on, checked by autograd on the full batch: rows with A = 0 get
    exactly zero gradient, and the loss (with the full batch's counts) and the other rows' gradients
    are those of the subset alone."""
    g = torch.Generator().manual_seed(0)
    B, T = 8, 5
    mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (B,), generator=g)[:, None]).float()
    old = -torch.rand(B, T, generator=g) * 3
    logp_full = (old + 0.3 * torch.randn(B, T, generator=g)).requires_grad_()  # ratios inside and outside clips
    adv = torch.randn(B, 1, generator=g).expand(B, T).clone()
    adv[[1, 4, 5]] = 0.0
    counts = dict(batch_num_tokens=mask.sum(), batch_num_seqs=(mask.sum(-1) > 0).sum())
    loss_full, _ = A.policy_loss(name, logp=logp_full, old_logp=old, advantages=adv, mask=mask, agg=agg, **counts)
    loss_full.backward()
    assert float(logp_full.grad[[1, 4, 5]].abs().max()) == 0.0
    keep = rows_with_advantage(adv, mask)
    logp_sub = logp_full.detach()[keep].clone().requires_grad_()
    loss_sub, _ = A.policy_loss(name, logp=logp_sub, old_logp=old[keep], advantages=adv[keep], mask=mask[keep],
                                agg=agg, **counts)
    loss_sub.backward()
    full, sub = float(loss_full.detach()), float(loss_sub.detach())
    assert abs(full - sub) <= 1e-6 * max(1.0, abs(full))
    assert torch.allclose(logp_sub.grad, logp_full.grad[keep], atol=1e-7, rtol=1e-6)
    assert float(logp_sub.grad.abs().max()) > 0


def test_clip_cov_is_coupled_across_rows_so_it_is_not_marked():
    """Why clip_cov stays out: which tokens it clips depends on the batch's covariance, so dropping
    zero-advantage rows changes the other rows' gradient (a skip there would not be exact)."""
    g = torch.Generator().manual_seed(1)
    B, T = 16, 4
    mask = torch.ones(B, T)
    old = -torch.rand(B, T, generator=g)
    logp = old + 0.1 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, 1, generator=g).expand(B, T).clone()
    adv[::2] = 0.0
    counts = dict(batch_num_tokens=mask.sum(), batch_num_seqs=torch.tensor(B))
    params = dict(clip_cov_ratio=0.2, clip_cov_lb=-10.0, clip_cov_ub=10.0)
    full, sub = logp.clone().requires_grad_(), logp[1::2].clone().requires_grad_()
    A.policy_loss("clip_cov", logp=full, old_logp=old, advantages=adv, mask=mask, **counts, **params)[0].backward()
    A.policy_loss("clip_cov", logp=sub, old_logp=old[1::2], advantages=adv[1::2], mask=mask[1::2], **counts,
                  **params)[0].backward()
    assert not torch.allclose(sub.grad, full.grad[1::2])


def _tiny(tmp_path):
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.tiny import save_tiny

    return load_model_and_tokenizer(save_tiny(tmp_path / "tiny", seed=1, hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4))


def _experience(tok, rewards, G=4):
    from rlvr.rollout.base import Rollout
    from rlvr.experience.batch import Experience

    g = torch.Generator().manual_seed(0)
    n = len(rewards) // G
    prompts = [str(i) * (1 + 2 * i) + "=" for i in range(n)]
    enc = tok([p for p in prompts for _ in range(G)], return_tensors="pt", padding=True, padding_side="left")
    B = enc["input_ids"].shape[0]
    lengths = torch.randint(1, 6, (B,), generator=g)
    T = int(lengths.max())
    c_ids = torch.randint(4, len(tok), (B, T), generator=g)
    c_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    group = torch.arange(B) // G
    rollout = Rollout(prompt_ids=enc["input_ids"], prompt_mask=enc["attention_mask"], completion_ids=c_ids,
                      completion_mask=c_mask, rollout_logp=torch.zeros(B, T), finish_reason=["stop"] * B,
                      prompt_index=group, texts=[""] * B, policy_version=0)
    return Experience(rollout=rollout, rewards=torch.tensor(rewards, dtype=torch.float32), reward_components={},
                      group=group, problems=[None] * B)


@pytest.mark.parametrize("loss", ["vanilla", "gspo", "cispo"])
@pytest.mark.parametrize("case", ["some_groups_constant", "all_groups_constant"])
def test_an_update_that_skips_zero_advantage_rows_moves_the_weights_as_training_every_row(
        fast_config, tmp_path, loss, case):
    """Two updates of 4 minibatches each (the second sees the ratios the first moved), on a batch where
    groups 0, 2, 3 (or all) have equal rewards: parameters match the every-row run to float
    reassociation; AdamW stepped on zero gradients where a minibatch had nothing left to train."""
    from rlvr.train.learner import Learner

    base, tok = _tiny(tmp_path)
    rewards = {"some_groups_constant": [1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0, 1, 0],
               "all_groups_constant": [1] * 8 + [0] * 16}[case]
    exp = _experience(tok, rewards)
    final, fracs = {}, {}
    for setting in ("auto", "never"):
        cfg = fast_config("trainer.num_minibatches=4", "trainer.old_logp=recompute", "trainer.warmup_steps=0",
                          f"algorithm.policy_loss={loss}", f"trainer.skip_zero_advantage={setting}",
                          "trainer.micro_batch_size=8", "trainer.weight_decay=0.1")
        model = copy.deepcopy(base)
        learner = Learner(model, cfg)
        metrics = [learner.update(exp, step=s) for s in range(2)]
        final[setting] = torch.cat([p.detach().flatten() for p in model.parameters()])
        fracs[setting] = metrics[-1]["trained_rows_frac"]
        for m in metrics:  # loss metrics are means over the minibatches (and rows) that trained
            if case == "some_groups_constant" or setting == "never":
                assert abs(m["ratio_mean"] - 1.0) < 0.05 and m["entropy"] > 0, m
            else:
                assert m["loss"] == 0.0 and m["clip_frac"] == 0.0 and m["entropy"] != m["entropy"], m
        assert learner.skip_zero_advantage()[0] == (setting == "auto")
    start = torch.cat([p.detach().flatten() for p in base.parameters()])
    moved = float((final["never"] - start).abs().max())  # all constant: only weight decay moves them
    assert moved > {"some_groups_constant": 1e-4, "all_groups_constant": 1e-6}[case]
    assert torch.allclose(final["auto"], final["never"], atol=1e-6, rtol=1e-5)
    assert fracs["never"] == 1.0
    assert fracs["auto"] == {"some_groups_constant": 0.5, "all_groups_constant": 0.0}[case]
