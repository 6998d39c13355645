"""Advantage estimators other than GRPO: hand-computed closed forms and properties."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from rlvr.algorithms import ADVANTAGE_ESTIMATORS, compute_advantages

D = torch.float64
API_NAMES = [
    "gae",
    "grpo",
    "dr_grpo",
    "lite_ppo",
    "rloo",
    "reinforce_plus_plus",
    "reinforce_plus_plus_baseline",
    "remax",
    "opo",
    "gpg",
]


def test_all_api_names_registered():
    assert set(API_NAMES) <= set(ADVANTAGE_ESTIMATORS)


def _col0(name, r, g, T=2, mask=None, **hp):
    mask = torch.ones(len(r), T, dtype=D) if mask is None else mask
    a, ret = compute_advantages(name, rewards=torch.tensor(r, dtype=D), mask=mask, group=torch.tensor(g), **hp)
    return a[:, 0], ret


def test_dr_grpo():
    a, _ = _col0("dr_grpo", [1.0, 0.0, 1.0, 0.0], [0, 0, 0, 0])
    assert torch.allclose(a, torch.tensor([0.5, -0.5, 0.5, -0.5], dtype=D))


def test_lite_ppo_group_mean_batch_std():
    a, _ = _col0("lite_ppo", [1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1])
    # group means 0.5 / 1; Bessel std of the whole batch [1,0,1,1] = 0.5
    assert torch.allclose(a, torch.tensor([0.5, -0.5, 0.0, 0.0], dtype=D) / (0.5 + 1e-6))
    a, _ = _col0("lite_ppo", [2.0, 2.0, 2.0], [0, 1, 1])  # constant batch
    assert torch.count_nonzero(a) == 0


def test_rloo_leave_one_out():
    a, _ = _col0("rloo", [1.0, 0.0, 0.0, 0.0, 3.0], [4, 4, 4, 4, 9])
    assert torch.allclose(a, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, 3.0], dtype=D))


def test_opo_length_weighted_baseline():
    m = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=D)
    a, _ = compute_advantages("opo", rewards=torch.tensor([1.0, 0.0], dtype=D), mask=m, group=torch.tensor([0, 0]))
    # b = (1*1 + 3*0) / 4
    assert torch.allclose(a, torch.tensor([[0.75, 0, 0], [-0.25, -0.25, -0.25]], dtype=D))


def test_gpg_alpha_rescales_by_valid_fraction():
    a, _ = _col0("gpg", [1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1])
    assert torch.allclose(a, torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=D))  # alpha = 4 / 2
    a, _ = _col0("gpg", [1.0, 0.0], [0, 0], f_norm=2.0)
    assert torch.allclose(a, torch.tensor([0.25, -0.25], dtype=D))


def test_reinforce_plus_plus_baseline_whitened():
    a, ret = _col0("reinforce_plus_plus_baseline", [1.0, 0.0], [0, 0])
    assert ret is None
    # tokens [0.5, 0.5, -0.5, -0.5]: mean 0, Bessel var 1/3
    assert torch.allclose(a, torch.tensor([0.5, -0.5], dtype=D) / math.sqrt(1 / 3 + 1e-8))


def test_reinforce_plus_plus_discounting_skips_masked_positions():
    m = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0]], dtype=D)
    tr = torch.tensor([[0.0, 9.0, 1.0, 5.0], [2.0, 0.0, 0.0, 0.0]], dtype=D)
    a, ret = compute_advantages("reinforce_plus_plus", token_rewards=tr, mask=m, gamma=0.5)
    assert torch.allclose(ret, torch.tensor([[0.5, 0, 1.0, 0], [2.0, 0.0, 0, 0]], dtype=D))
    vals = torch.tensor([0.5, 1.0, 2.0, 0.0], dtype=D)
    expected = (vals - vals.mean()) / math.sqrt(vals.var() + 1e-8)
    assert torch.allclose(a[m != 0], expected)
    assert torch.all(a[m == 0] == 0)


def test_reinforce_plus_plus_outcome_reward_on_last_token():
    m = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=D)
    _, ret = compute_advantages("reinforce_plus_plus", rewards=torch.tensor([1.0, 2.0], dtype=D), mask=m, gamma=0.5)
    assert torch.allclose(ret, torch.tensor([[0.25, 0.5, 1.0], [1.0, 2.0, 0.0]], dtype=D))


def test_remax():
    m = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=D)
    a, ret = compute_advantages(
        "remax", rewards=torch.tensor([1.0, 0.0], dtype=D), mask=m, baseline_rewards=torch.tensor([0.25, 0.5], dtype=D)
    )
    assert torch.allclose(ret, torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=D))
    assert torch.allclose(a, torch.tensor([[0.75, 0.75, 0], [-0.5, -0.5, -0.5]], dtype=D))


def test_gae_hand_computed():
    v = torch.tensor([[0.5, 0.2, 0.1]], dtype=D)
    r = torch.tensor([[0.0, 0.0, 1.0]], dtype=D)
    m = torch.ones(1, 3, dtype=D)
    a, ret = compute_advantages("gae", token_rewards=r, values=v, mask=m, gamma=0.9, lam=0.8, whiten=False)
    a2 = 0.9
    a1 = (0 + 0.9 * 0.1 - 0.2) + 0.72 * a2
    a0 = (0 + 0.9 * 0.2 - 0.5) + 0.72 * a1
    assert torch.allclose(a, torch.tensor([[a0, a1, a2]], dtype=D))
    assert torch.allclose(ret, a + v)


def test_gae_lambda_one_is_monte_carlo_minus_value():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 5, generator=g, dtype=D)
    r = torch.randn(3, 5, generator=g, dtype=D)
    m = torch.ones(3, 5, dtype=D)
    a, ret = compute_advantages("gae", token_rewards=r, values=v, mask=m, gamma=1.0, lam=1.0, whiten=False)
    mc = r.flip(-1).cumsum(-1).flip(-1)
    assert torch.allclose(ret, mc)
    assert torch.allclose(a, mc - v)


def test_gae_skips_observation_tokens_and_whitens():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(2, 6, generator=g, dtype=D)
    r = torch.randn(2, 6, generator=g, dtype=D)
    m = torch.tensor([[1, 1, 0, 0, 1, 0], [1, 0, 1, 1, 0, 0]], dtype=D)
    a, ret = compute_advantages("gae", token_rewards=r, values=v, mask=m, gamma=0.95, lam=0.9, whiten=False)
    for i in range(2):
        idx = torch.nonzero(m[i]).squeeze(-1)
        ai, reti = compute_advantages(
            "gae", token_rewards=r[i, idx][None], values=v[i, idx][None], mask=torch.ones(1, len(idx), dtype=D),
            gamma=0.95, lam=0.9, whiten=False,
        )
        assert torch.allclose(a[i, idx], ai[0]) and torch.allclose(ret[i, idx], reti[0])
    assert torch.all(a[m == 0] == 0)
    aw, _ = compute_advantages("gae", token_rewards=r, values=v, mask=m, gamma=0.95, lam=0.9)
    vals = a[m != 0]
    assert torch.allclose(aw[m != 0], (vals - vals.mean()) / torch.sqrt(vals.var() + 1e-8))


def test_gae_requires_values():
    with pytest.raises(ValueError):
        compute_advantages("gae", rewards=torch.ones(1), mask=torch.ones(1, 1))


def _extra(name, b, t, gen):
    if name == "gae":
        return {"values": torch.randn(b, t, generator=gen, dtype=D)}
    if name == "remax":
        return {"baseline_rewards": torch.rand(b, generator=gen, dtype=D)}
    return {}


@pytest.mark.parametrize("name", API_NAMES)
def test_length_one_and_fully_masked_rows(name):
    g = torch.Generator().manual_seed(0)
    m = torch.tensor([[1], [0], [1]], dtype=D)
    a, ret = compute_advantages(
        name, rewards=torch.tensor([1.0, 0.5, 0.0], dtype=D), mask=m, group=torch.tensor([0, 0, 0]), **_extra(name, 3, 1, g)
    )
    assert a.shape == (3, 1) and torch.isfinite(a).all()
    assert a[1, 0] == 0


@settings(max_examples=50, deadline=None)
@given(
    name=st.sampled_from(API_NAMES),
    b=st.integers(1, 6),
    t=st.integers(1, 4),
    pad=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_padding_invariance_and_permutation_equivariance(name, b, t, pad, seed):
    gen = torch.Generator().manual_seed(seed)
    r = torch.randint(0, 3, (b,), generator=gen).to(D)
    grp = torch.randint(0, 3, (b,), generator=gen) * 5 - 4
    m = (torch.rand(b, t, generator=gen) > 0.3).to(D)
    extra = _extra(name, b, t, gen)
    a, ret = compute_advantages(name, rewards=r, mask=m, group=grp, **extra)
    assert torch.isfinite(a).all()
    assert torch.all(a[m == 0] == 0)
    # padding with masked junk columns changes nothing
    m2 = torch.cat([m, torch.zeros(b, pad, dtype=D)], 1)
    extra2 = dict(extra)
    if "values" in extra:
        extra2["values"] = torch.cat([extra["values"], 100 * torch.randn(b, pad, generator=gen, dtype=D)], 1)
    a2, ret2 = compute_advantages(name, rewards=r, mask=m2, group=grp, **extra2)
    assert torch.allclose(a2[:, :t], a, atol=1e-10) and torch.all(a2[:, t:] == 0)
    if ret is not None:
        assert torch.allclose(ret2[:, :t], ret, atol=1e-10)
    # permuting responses permutes the advantages
    perm = torch.randperm(b, generator=gen)
    extra3 = {k: v[perm] for k, v in extra.items()}
    a3, _ = compute_advantages(name, rewards=r[perm], mask=m[perm], group=grp[perm], **extra3)
    assert torch.allclose(a3, a[perm], atol=1e-10)


def test_inputs_not_modified():
    r = torch.tensor([1.0, 0.0, 2.0])
    m = torch.ones(3, 2)
    v = torch.randn(3, 2)
    copies = [x.clone() for x in (r, m, v)]
    for name in API_NAMES:
        compute_advantages(name, rewards=r, mask=m, values=v if name == "gae" else None,
                           group=torch.tensor([0, 0, 1]), **({"baseline_rewards": r} if name == "remax" else {}))
    assert all(torch.equal(x, c) for x, c in zip((r, m, v), copies))


def test_rover_advantage_is_group_centred_reward():
    a, _ = _col0("rover", [1.0, 0.0, 0.0, 1.0, 1.0], [0, 0, 0, 1, 1])
    assert torch.allclose(a, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0], dtype=D))


def test_asyppo_gae_on_mean_values_and_masks():
    from rlvr.algorithms import asyppo_masks

    g = torch.Generator().manual_seed(0)
    vals = torch.randn(2, 2, 5, generator=g, dtype=D)
    r = torch.randn(2, 5, generator=g, dtype=D)
    m = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=D)
    a, ret = compute_advantages("asyppo", token_rewards=r, values=vals, mask=m, gamma=0.9, lam=0.9)
    a2, ret2 = compute_advantages("gae", token_rewards=r, values=vals.mean(0), mask=m, gamma=0.9, lam=0.9)
    assert torch.allclose(a, a2) and torch.allclose(ret, ret2)
    # critic 0 predicts 0 everywhere, critic 1 as below: sigma = |V_1| / sqrt(2)
    v = torch.zeros(2, 2, 5, dtype=D)
    v[1, 0] = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0], dtype=D)
    v[1, 1] = torch.tensor([0.5, 0.6, 0.7, 0.8, 0.9], dtype=D)
    m2 = m.clone()
    m2[1, 4] = 0
    am, em = asyppo_masks(v, m2, adv_mask_frac=0.2, ent_mask_frac=0.2)  # N = 9 -> 1 token each
    # lowest sigma: row 0 token 4 (0); highest: row 0 token 0 (4 / sqrt 2)
    assert am[0, 4] == 0 and am.sum() == 8
    assert em[0, 0] == 0 and em.sum() == 8
    assert am[1, 4] == 0 and em[1, 4] == 0  # masked token stays 0
    one, one_e = asyppo_masks(v[:1], m2)
    assert torch.equal(one, m2) and torch.equal(one_e, m2)
