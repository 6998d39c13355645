"""Third wave of the algorithm core (issue 29, items 2 and 3): TRL 1.16 parity fixes (RLOO's sequence-likelihood
ratio, the bias-corrected KL, VESPO with the IS ratio in its weight) and the MaxRL / FlashREINFORCE advantage
estimators. Every expected value is computed here from the published formula (python loops over floats, closed
forms, exact enumeration), never by calling the implementation under test; rows are ragged and longer than one
token so that sequence means and sums differ."""

import itertools
import math
import warnings

import pytest
import torch

from rlvr import algorithms as A
from rlvr.config import ConfigError, ConfigWarning, load_config


@pytest.fixture(autouse=True)
def _float64():
    """float64 for these tests only (a module-level default would leak into every later test)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _mask(lengths, t_len):
    return torch.tensor([[1.0 if t < n else 0.0 for t in range(t_len)] for n in lengths])


def _ragged_case(seed, far=False):
    """Four responses of 5, 3, 4 and 2 valid tokens; log-ratios of a few tenths (some sequences inside the
    clip, some outside), with ``far`` one sequence whose summed log-ratio is beyond 20."""
    g = torch.Generator().manual_seed(seed)
    mask = _mask([5, 3, 4, 2], 6)
    old = -torch.rand(4, 6, generator=g) * 3
    lp = old + torch.randn(4, 6, generator=g) * 0.15
    if far:
        lp[2, :4] = old[2, :4] + 6.5  # sum 26 > 20, mean 6.5
    adv = torch.tensor([1.0, -0.5, -1.5, 0.7])
    return lp, old, adv, mask


# ------------------------------------------------------------------- 2a. RLOO: sequence-likelihood ratio


def _trl_rloo_loss(lp, old, adv, mask, eps_low=0.2, eps_high=0.2):
    """TRL 1.16 ``RLOOTrainer._compute_loss`` as its documentation states it: per sequence the log-likelihood
    ratio ``sum_t m (lp - lp_old)``, the PPO clip of its exp, the mean over the sequences. No clamp."""
    logps = (lp * mask).sum(1)
    old_logps = (old * mask).sum(1)
    coef_1 = torch.exp(logps - old_logps)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    return (-torch.min(coef_1 * adv, coef_2 * adv)).mean()


def _rlvr_rloo(lp, old, adv, mask, **hp):
    hp = {"importance_sampling_level": "sequence_sum", "clip_ratio_c": None, "log_ratio_clamp": None, **hp}
    loss, _ = A.policy_loss("vanilla", logp=lp, old_logp=old, advantages=adv.unsqueeze(-1) * mask, mask=mask,
                            agg="seq-mean-token-mean", **hp)
    return loss


@pytest.mark.parametrize("seed,far", [(0, False), (1, False), (2, True)])
def test_sequence_sum_is_trl_rloo_loss_and_gradient(seed, far):
    lp, old, adv, mask = _ragged_case(seed, far)
    x1 = lp.clone().requires_grad_(True)
    want = _trl_rloo_loss(x1, old, adv, mask)
    (g_want,) = torch.autograd.grad(want, x1)
    x2 = lp.clone().requires_grad_(True)
    got = _rlvr_rloo(x2, old, adv, mask)
    (g_got,) = torch.autograd.grad(got, x2)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    assert torch.allclose(g_got * mask, g_want * mask, rtol=1e-10, atol=1e-12)


def test_sequence_sum_by_hand_differs_from_the_mean_level():
    lp, old, adv, mask = _ragged_case(1)
    per_seq = []
    for i in range(4):
        s = sum(float(lp[i, t] - old[i, t]) for t in range(6) if mask[i, t])
        ratio = math.exp(s)
        a = float(adv[i])
        per_seq.append(-min(ratio * a, min(max(ratio, 0.8), 1.2) * a))
    want = sum(per_seq) / 4
    assert float(_rlvr_rloo(lp, old, adv, mask)) == pytest.approx(want, rel=1e-12)
    # "sequence" stays GSPO's mean: on rows longer than one token the two levels give different numbers
    mean_level = _rlvr_rloo(lp, old, adv, mask, importance_sampling_level="sequence")
    assert abs(float(mean_level) - want) > 1e-4


def test_sequence_sum_clamp_and_rows_without_tokens():
    lp, old, adv, mask = _ragged_case(2, far=True)  # row 2: summed log-ratio 26 + noise
    s2 = float(((lp - old) * mask)[2].sum())
    assert s2 > 20
    # default clamp (20) bounds the sequence value: A = -1.5 < 0, unclipped branch -A * e^20
    on, _ = A.policy_loss("vanilla", logp=lp, old_logp=old, advantages=adv.unsqueeze(-1) * mask, mask=mask,
                          agg="seq-mean-token-mean", importance_sampling_level="sequence_sum", clip_ratio_c=None)
    off = _rlvr_rloo(lp, old, adv, mask)
    rest = float(off) * 4 - 1.5 * math.exp(s2)
    assert float(on) == pytest.approx((rest + 1.5 * math.exp(20.0)) / 4, rel=1e-9)
    # a row without tokens adds nothing and is not counted (B' = rows with a valid token)
    lp5 = torch.cat([lp, torch.zeros(1, 6)])
    old5 = torch.cat([old, torch.zeros(1, 6)])
    mask5 = torch.cat([mask, torch.zeros(1, 6)])
    adv5 = torch.cat([adv, torch.tensor([2.0])])
    assert float(_rlvr_rloo(lp5, old5, adv5, mask5)) == pytest.approx(float(off), rel=1e-12)


@pytest.mark.parametrize("name", ["cispo", "sapo"])
def test_sequence_sum_reaches_other_ratio_losses(name):
    lp, old, adv, mask = _ragged_case(0)
    s = ((lp - old) * mask).sum(-1)
    a = adv.unsqueeze(-1) * mask
    r = torch.exp(s).unsqueeze(-1).expand_as(lp)
    if name == "cispo":
        per = -torch.clamp(r, max=5.0) * a * lp
    else:
        tau = torch.where(a > 0, torch.tensor(1.0), torch.tensor(1.05))
        per = -torch.sigmoid(tau * (r - 1)) * 4 / tau * a
    want = (per * mask).sum() / mask.sum()
    got, _ = A.policy_loss(name, logp=lp, old_logp=old, advantages=a, mask=mask,
                           importance_sampling_level="sequence_sum")
    assert float(got) == pytest.approx(float(want), rel=1e-12)


# ------------------------------------------------------------------- 2b. bias-corrected (IS-weighted) k3


def _trl_k3_bias_corrected(lp, old, ref):
    """TRL ``use_bias_correction_kl``: ``exp(lp - lp_old) * (exp(ref - lp) - (ref - lp) - 1)``, no clamps."""
    return torch.exp(lp - old) * (torch.exp(ref - lp) - (ref - lp) - 1)


def _kl_case():
    g = torch.Generator().manual_seed(3)
    mask = _mask([4, 2, 3], 4)
    old = -torch.rand(3, 4, generator=g) * 2
    lp = old + torch.randn(3, 4, generator=g) * 0.3
    lp[0, 1] = old[0, 1] + 22.0  # |lp - lp_old| > 20: the ratio clamp bites
    ref = lp + torch.randn(3, 4, generator=g) * 0.4
    ref[1, 0] = lp[1, 0] + 15.0  # k3 > 10: the value clamp bites
    return lp, old, ref, mask


def test_k3_is_without_clamps_is_trl_value_and_gradient():
    lp, old, ref, _ = _kl_case()
    x1 = lp.clone().requires_grad_(True)
    want = _trl_k3_bias_corrected(x1, old, ref)
    (g_want,) = torch.autograd.grad(want.sum(), x1)
    x2 = lp.clone().requires_grad_(True)
    got = A.kl_penalty(x2, ref, "k3_is", old_logp=old, log_ratio_clamp=None, value_clamp=None)
    (g_got,) = torch.autograd.grad(got.sum(), x2)
    assert torch.allclose(got, want, rtol=1e-12)
    assert torch.allclose(g_got, g_want, rtol=1e-10)
    # the same through importance_weighted_kl with its new switches
    x3 = lp.clone().requires_grad_(True)
    iw = A.importance_weighted_kl(x3, ref, old, "k3", max_log_ratio=None, log_ratio_clamp=None, value_clamp=None)
    assert torch.allclose(iw, want, rtol=1e-12)


def test_importance_weighted_kl_defaults_keep_todays_clamps():
    lp, old, ref, _ = _kl_case()
    out = A.importance_weighted_kl(lp, ref, old, "k3")
    for i in range(3):
        for t in range(4):
            rho = math.exp(max(-20.0, min(20.0, float(lp[i, t] - old[i, t]))))
            k = max(-20.0, min(20.0, float(ref[i, t] - lp[i, t])))
            k3 = max(-10.0, min(10.0, math.exp(k) - k - 1))
            assert float(out[i, t]) == pytest.approx(rho * k3, rel=1e-12)
    assert float(out[0, 1]) == pytest.approx(math.exp(20.0) * float(A.kl_penalty(lp, ref, "k3")[0, 1]), rel=1e-12)
    assert torch.allclose(A.kl_penalty(lp, ref, "k3_is", old_logp=old), out)  # k3_is defaults: the same clamps
    # k1 takes no clamps: the switches do not reach it
    k1 = A.importance_weighted_kl(lp, ref, old, "k1", value_clamp=None)
    assert torch.allclose(k1, torch.exp(torch.clamp(lp - old, -20, 20)) * (lp - ref))


def test_k3_is_without_old_logp_is_trl_on_policy_fallback():
    lp, _, ref, _ = _kl_case()
    x = lp.clone().requires_grad_(True)
    out = A.kl_penalty(x, ref, "k3_is", log_ratio_clamp=None, value_clamp=None)
    (g,) = torch.autograd.grad(out.sum(), x)
    for i in range(3):
        for t in range(4):
            u = float(lp[i, t] - ref[i, t])
            k3 = math.exp(-u) - 1 + u
            assert float(out[i, t].detach()) == pytest.approx(k3, rel=1e-12)  # rho = 1 in value
            assert float(g[i, t]) == pytest.approx(k3 + 1 - math.exp(-u), rel=1e-10)  # k3 grad lp + grad k3


@pytest.mark.parametrize("old_is_current", [False, True])
def test_k3_is_in_loss_has_the_exact_reverse_kl_gradient(old_is_current):
    """Exact enumeration over a 4-token vocabulary: the expectation under pi_old of the k3_is gradient equals
    the gradient of KL(pi_theta || pi_ref) (plain k3 in the loss does not: its expectation is the forward KL's)."""
    theta = torch.tensor([0.3, -0.4, 1.1, 0.0], requires_grad=True)
    ref = torch.log_softmax(torch.tensor([0.1, 0.5, -0.3, 0.2]), -1)
    old = torch.log_softmax(theta.detach() if old_is_current else torch.tensor([-0.2, 0.4, 0.6, 0.1]), -1)
    lp = torch.log_softmax(theta, -1)
    q = torch.exp(old)
    if old_is_current:
        est = A.kl_penalty(lp[None], ref[None], "k3_is")[0]  # no old_logp: sg(lp)
    else:
        est = A.kl_penalty(lp[None], ref[None], "k3_is", old_logp=old[None])[0]
    (g_est,) = torch.autograd.grad((q * est).sum(), theta)
    p = torch.softmax(theta, -1)
    (g_kl,) = torch.autograd.grad((p * (torch.log(p) - ref)).sum(), theta)
    assert torch.allclose(g_est, g_kl, atol=1e-12)
    lp = torch.log_softmax(theta, -1)
    (g_k3,) = torch.autograd.grad((q * A.kl_penalty(lp[None], ref[None], "k3")[0]).sum(), theta)
    assert not torch.allclose(g_k3, g_kl, atol=1e-4)


@pytest.mark.parametrize("loss_type", ["bnpo", "grpo"])
def test_trl_grpo_loss_with_bias_corrected_kl(loss_type):
    """TRL 1.16 GRPO loss with beta > 0 and ``use_bias_correction_kl=True`` (token level, no clamps) equals
    rlvr's vanilla + beta * aggregate(k3_is), value and gradient."""
    lp, old, ref, mask = _kl_case()
    lp[0, 1] = old[0, 1] + 0.5
    adv = torch.tensor([0.8, -1.2, 0.3])
    beta = 0.04

    def trl(x):
        coef_1 = torch.exp(x - old)
        coef_2 = torch.clamp(coef_1, 0.8, 1.2)
        a = adv.unsqueeze(1)
        per = -torch.min(coef_1 * a, coef_2 * a) + beta * _trl_k3_bias_corrected(x, old, ref)
        if loss_type == "grpo":
            return ((per * mask).sum(-1) / mask.sum(-1)).mean()
        return (per * mask).sum() / mask.sum()

    agg = "seq-mean-token-mean" if loss_type == "grpo" else "token-mean"
    x1 = lp.clone().requires_grad_(True)
    want = trl(x1)
    (g_want,) = torch.autograd.grad(want, x1)
    x2 = lp.clone().requires_grad_(True)
    pol, _ = A.policy_loss("vanilla", logp=x2, old_logp=old, advantages=adv.unsqueeze(-1) * mask, mask=mask, agg=agg,
                           clip_ratio_c=None, log_ratio_clamp=None)
    kl_hp = A.kl_params("k3_is", {"log_ratio_clamp": None, "value_clamp": None, "old_logp": old})
    got = pol + beta * A.aggregate_loss(A.kl_penalty(x2, ref, "k3_is", **kl_hp), mask, agg)
    (g_got,) = torch.autograd.grad(got, x2)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    # k3 of e^15 at one token: its gradient k3 + 1 - e^15 cancels about 1e-9 absolutely in float64
    assert torch.allclose(g_got * mask, g_want * mask, rtol=1e-10, atol=1e-8)


def test_k3_is_params_and_config():
    assert A.kl_params("k3_is", {"log_ratio_clamp": None, "value_clamp": 5.0, "coef": 1}) == {
        "log_ratio_clamp": None, "value_clamp": 5.0}
    assert "k3_is" in A.KL_ESTIMATORS
    cfg = load_config("configs/grpo_arithmetic_tiny.yaml", ["kl.placement=loss", "kl.estimator=k3_is", "kl.coef=0.04",
                                                             "kl.log_ratio_clamp=null", "kl.value_clamp=null"])
    assert cfg.kl.estimator == "k3_is"
    with pytest.raises(ConfigError, match="k3_is"):
        load_config("configs/grpo_arithmetic_tiny.yaml", ["kl.estimator=k3is"])


# ----------------------------------------------------------------------- 2c. VESPO with the IS ratio in w


def _trl_vespo_loss(lp, old, adv, mask, is_ratio, k=(2.0, 3.0, 3.0, 2.0)):
    """TRL 1.16 ``get_gamma_weights`` + ``loss_type="vespo"`` written as python loops: ``log w = clamp(sum_t
    m clamp(lp - lp_old, +-20) + sum_t clamp(log is_ratio, log 1e-8, 20), log 1e-8, 20)``, ``phi = exp(lambda +
    k log w - lambda w)``, per token ``-phi A lp``, summed and divided by the token count."""
    lo = math.log(1e-8)
    total, n = 0.0, 0.0
    for i in range(lp.shape[0]):
        s = 0.0
        for t in range(lp.shape[1]):
            s += float(mask[i, t]) * max(-20.0, min(20.0, float(lp[i, t] - old[i, t])))
        for t in range(lp.shape[1]):
            r = float(is_ratio[i, t])
            s += max(lo, min(20.0, math.log(r) if r > 0 else -math.inf))
        log_w = max(lo, min(20.0, s))
        kk, lam = (k[0], k[1]) if float(adv[i]) >= 0 else (k[2], k[3])
        phi = math.exp(lam + kk * log_w - lam * math.exp(log_w))
        for t in range(lp.shape[1]):
            if mask[i, t]:
                total += -phi * float(adv[i]) * float(lp[i, t])
                n += 1
    return total / n


def _vespo_case():
    g = torch.Generator().manual_seed(5)
    mask = _mask([4, 2, 3], 5)
    old = -torch.rand(3, 5, generator=g) * 2
    lp = old + torch.randn(3, 5, generator=g) * 0.1
    adv = torch.tensor([1.0, -0.6, 0.4])
    is_ratio = torch.exp(torch.randn(3, 5, generator=g) * 0.2).clamp(max=2.0)  # TIS-truncated, as token_truncate
    is_ratio = torch.where(mask != 0, is_ratio, torch.ones_like(is_ratio))  # TRL: exactly 1 outside the mask
    is_ratio[2, 1] = 0.0  # a token dropped by token_mask (MIS): log clamps to log 1e-8
    return lp, old, adv, mask, is_ratio


def test_vespo_weights_in_w_is_trl_with_importance_sampling_ratio():
    lp, old, adv, mask, is_ratio = _vespo_case()
    want = _trl_vespo_loss(lp, old, adv, mask, is_ratio)
    x = lp.clone().requires_grad_(True)
    got, _ = A.policy_loss("vespo", logp=x, old_logp=old, advantages=adv.unsqueeze(-1) * mask, mask=mask,
                           weights=is_ratio, weights_in_w=True)
    assert float(got.detach()) == pytest.approx(want, rel=1e-12)
    (g,) = torch.autograd.grad(got, x)
    from rlvr.algorithms.policy_losses import vespo_gamma_weights
    phi = vespo_gamma_weights(adv.unsqueeze(-1) * mask, lp, old, mask, importance_sampling_ratio=is_ratio)
    assert float(phi[2, 0]) < 1e-12  # the MIS-dropped token makes w ~ 1e-8: phi ~ e^(3 + 2 log 1e-8)
    assert torch.allclose(g * mask, -phi * adv.unsqueeze(-1) * mask / mask.sum())  # weights do not multiply
    # rlvr's padding convention: what sits outside the mask never enters w
    padded = torch.where(mask != 0, is_ratio, torch.zeros_like(is_ratio))
    got2, _ = A.policy_loss("vespo", logp=lp, old_logp=old, advantages=adv.unsqueeze(-1) * mask, mask=mask,
                            weights=padded, weights_in_w=True)
    assert float(got2) == pytest.approx(want, rel=1e-12)


def test_vespo_default_still_multiplies_weights_into_the_loss():
    lp, old, adv, mask, is_ratio = _vespo_case()
    got, _ = A.policy_loss("vespo", logp=lp, old_logp=old, advantages=adv.unsqueeze(-1) * mask, mask=mask,
                           weights=is_ratio)
    ones = torch.ones_like(is_ratio)
    total = 0.0
    lo = math.log(1e-8)
    for i in range(3):
        s = sum(max(-20.0, min(20.0, float(lp[i, t] - old[i, t]))) for t in range(5) if mask[i, t])
        log_w = max(lo, min(20.0, s))
        kk, lam = (2.0, 3.0) if float(adv[i]) >= 0 else (3.0, 2.0)
        phi = math.exp(lam + kk * log_w - lam * math.exp(log_w))
        total += sum(-phi * float(adv[i]) * float(lp[i, t]) * float(is_ratio[i, t]) for t in range(5) if mask[i, t])
    assert float(got) == pytest.approx(total / float(mask.sum()), rel=1e-12)
    assert abs(float(got) - _trl_vespo_loss(lp, old, adv, mask, is_ratio)) > 1e-6  # the two options differ
    # with weights 1 both options are today's VESPO
    a, _ = A.policy_loss("vespo", logp=lp, old_logp=old, advantages=adv.unsqueeze(-1) * mask, mask=mask, weights=ones)
    b, _ = A.policy_loss("vespo", logp=lp, old_logp=old, advantages=adv.unsqueeze(-1) * mask, mask=mask, weights=ones,
                         weights_in_w=True)
    assert float(a) == pytest.approx(float(b), rel=1e-12)


def test_vespo_weights_in_w_far_off_policy_and_config():
    lp, old, adv, mask, is_ratio = _vespo_case()
    lp[0, 0] = old[0, 0] + 30.0  # the per-token clamp at 20 and log w at 20: phi underflows to 0
    want = _trl_vespo_loss(lp, old, adv, mask, is_ratio)
    got, _ = A.policy_loss("vespo", logp=lp, old_logp=old, advantages=adv.unsqueeze(-1) * mask, mask=mask,
                           weights=is_ratio, weights_in_w=True)
    assert math.isfinite(float(got)) and float(got) == pytest.approx(want, rel=1e-12, abs=1e-300)
    load_config("configs/grpo_arithmetic_tiny.yaml", ["algorithm.policy_loss=vespo",
                                                      "algorithm.policy_loss_params={weights_in_w: true}",
                                                      "algorithm.mismatch.method=tis"])
    with pytest.raises(ConfigError, match="expected a boolean"):
        load_config("configs/grpo_arithmetic_tiny.yaml", ["algorithm.policy_loss=vespo",
                                                          "algorithm.policy_loss_params={weights_in_w: 2.0}"])


# ----------------------------------------------------------------------------------------------- 3. MaxRL


def _groups(group):
    out = {}
    for i, g in enumerate(group):
        out.setdefault(g, []).append(i)
    return out


def _maxrl_loop(rewards, group, control_variate=True, epsilon=0.0):
    """Algorithm 1 of arXiv 2602.02710 per group: mu = mean reward; A = 0 if mu <= 0, else (r - mu) / mu
    (control variate) or r / mu (conditional estimator)."""
    out = [0.0] * len(rewards)
    for rows in _groups(group).values():
        mu = sum(rewards[i] for i in rows) / len(rows)
        for i in rows:
            if mu > 0:
                out[i] = ((rewards[i] - mu) if control_variate else rewards[i]) / (mu + epsilon)
    return out


REWARDS = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
GROUP = [7, 7, 3, 7, 3, 7, 3, 5, 5, 9, 2, 2, 2]  # non-contiguous ids: sizes 4, 3, 2 (all fail), 1, 3 (all pass)


@pytest.mark.parametrize("control_variate", [True, False])
@pytest.mark.parametrize("epsilon", [0.0, 1e-6])
def test_maxrl_against_loop(control_variate, epsilon):
    lengths = [3, 2, 4, 1, 3, 2, 2, 4, 1, 3, 2, 1, 4]
    mask = _mask(lengths, 4)
    adv, ret = A.compute_advantages("maxrl", rewards=torch.tensor(REWARDS), mask=mask, group=torch.tensor(GROUP),
                                    control_variate=control_variate, epsilon=epsilon)
    want = _maxrl_loop(REWARDS, GROUP, control_variate, epsilon)
    assert ret is None
    assert torch.allclose(adv, torch.tensor(want).unsqueeze(-1) * mask, rtol=1e-12, atol=0)


def test_maxrl_closed_forms_and_edges():
    # one group of N = 4 with K = 1 success: A = N r / K - 1 = [3, -1, -1, -1] (Algorithm 1, 1/p reweighting)
    mask = torch.ones(4, 2)
    adv, _ = A.compute_advantages("maxrl", rewards=torch.tensor([1.0, 0, 0, 0]), mask=mask)
    assert adv[:, 0].tolist() == [3.0, -1.0, -1.0, -1.0]
    adv, _ = A.compute_advantages("maxrl", rewards=torch.tensor([1.0, 0, 0, 0]), mask=mask, control_variate=False)
    assert adv[:, 0].tolist() == [4.0, 0.0, 0.0, 0.0]
    # all fail / all pass: exactly 0 with the control variate; singleton: 0 (A = R without it)
    adv, _ = A.compute_advantages("maxrl", rewards=torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]), mask=torch.ones(5, 1),
                                  group=torch.tensor([0, 0, 1, 1, 2]))
    assert adv[:, 0].tolist() == [0.0] * 5
    adv, _ = A.compute_advantages("maxrl", rewards=torch.tensor([1.0]), mask=torch.ones(1, 3), control_variate=False)
    assert adv.tolist() == [[1.0, 1.0, 1.0]]
    # outcome from token rewards (summed over the mask), interior mask zeros, an empty row
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    tr = torch.tensor([[0.0, 5.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    adv, _ = A.compute_advantages("maxrl", token_rewards=tr, mask=mask)
    assert adv.tolist() == [pytest.approx([2.0, 0.0, 2.0]), [-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]  # mu = 1/3
    # non-binary rewards with a group mean <= 0: no signal (prime-rl's rule), not a division by a negative mean
    adv, _ = A.compute_advantages("maxrl", rewards=torch.tensor([-1.0, 0.5, 2.0, 1.0]), mask=torch.ones(4, 1),
                                  group=torch.tensor([0, 0, 1, 1]))
    assert adv[:, 0].tolist() == [0.0, 0.0, pytest.approx(1 / 3), pytest.approx(-1 / 3)]
    empty, _ = A.compute_advantages("maxrl", rewards=torch.zeros(0), mask=torch.zeros(0, 3))
    assert empty.shape == (0, 3)


@pytest.mark.parametrize("control_variate", [True, False])
def test_maxrl_expected_gradient_by_enumeration(control_variate):
    """Exact expectation over all V^N rollout tuples (V = 3 answers, answer 0 correct, N = 3) of the policy
    gradient ``(1/N) sum_i A_i grad log pi(y_i)``.  The conditional estimator is unbiased for
    ``pass@N grad log p`` (paper, estimator-objective equivalence); the control-variate form with K = 0 dropped
    (Algorithm 1) adds ``E[V_N 1{K=0}] = -(1 - p)^(N-1) grad p`` (derived in the test from E[S 1{fail}])."""
    n, v = 3, 3
    theta = torch.tensor([-0.7, 0.4, 0.1], requires_grad=True)
    logpi = torch.log_softmax(theta, -1)
    surrogate = 0.0
    for ys in itertools.product(range(v), repeat=n):
        prob = math.prod(float(torch.exp(logpi[y].detach())) for y in ys)
        r = torch.tensor([1.0 if y == 0 else 0.0 for y in ys])
        adv, _ = A.compute_advantages("maxrl", rewards=r, mask=torch.ones(n, 1), control_variate=control_variate)
        surrogate = surrogate + prob * sum(float(adv[i, 0]) * logpi[y] for i, y in enumerate(ys)) / n
    (g,) = torch.autograd.grad(surrogate, theta)
    p = torch.softmax(theta.detach(), -1)[0]
    pass_n = 1 - (1 - float(p)) ** n
    (grad_logp,) = torch.autograd.grad(torch.log(torch.softmax(theta, -1)[0]), theta)
    (grad_p,) = torch.autograd.grad(torch.softmax(theta, -1)[0], theta)
    want = pass_n * grad_logp
    if control_variate:
        want = want - (1 - float(p)) ** (n - 1) * grad_p
    assert torch.allclose(g, want, atol=1e-12)


# ------------------------------------------------------------------------------------------ 3. FlashREINFORCE


def test_flash_reinforce_is_batch_centred_and_ignores_groups():
    rewards = [1.0, 0.0, 0.25, 1.0, 0.0]
    mask = _mask([3, 1, 2, 4, 2], 4)
    mean = sum(rewards) / len(rewards)
    want = torch.tensor([r - mean for r in rewards]).unsqueeze(-1) * mask
    for group in (None, torch.tensor([0, 0, 1, 1, 2]), torch.arange(5)):
        adv, ret = A.compute_advantages("flash_reinforce", rewards=torch.tensor(rewards), mask=mask, group=group)
        assert ret is None and torch.allclose(adv, want, rtol=1e-12, atol=0)
    # differs from a group baseline whenever groups have different means
    grpo_like, _ = A.compute_advantages("dr_grpo", rewards=torch.tensor(rewards), mask=mask,
                                        group=torch.tensor([0, 0, 1, 1, 2]))
    assert not torch.allclose(grpo_like, want)


def test_flash_reinforce_edges():
    one, _ = A.compute_advantages("flash_reinforce", rewards=torch.tensor([1.0]), mask=torch.ones(1, 2))
    assert one.tolist() == [[0.0, 0.0]]
    const, _ = A.compute_advantages("flash_reinforce", rewards=torch.full((3,), 0.1), mask=torch.ones(3, 2))
    assert const.abs().max() == 0.0
    # an empty row: its reward enters the mean, its advantage is 0 after the mask; token rewards are summed
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    tr = torch.tensor([[0.0, 9.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    adv, _ = A.compute_advantages("flash_reinforce", token_rewards=tr, mask=mask)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), rtol=0, atol=1e-15)
    assert A.compute_advantages("flash_reinforce", rewards=torch.zeros(0), mask=torch.zeros(0, 2))[0].shape == (0, 2)


def _flash_reference(lp, mu, rewards, lengths, delta):
    """FlashREINFORCE's loss written out from the paper/README, one float at a time: per row the mean
    Bernoulli KL of the sampled tokens (probabilities clamped to [1e-6, 1 - 1e-6]); kept rows contribute
    ``-(1/|y_i|) sum_t rho_t A_i lp_t`` with ``rho`` detached; the mean over all B rows.  Returns the loss and
    d loss / d lp_t (= -keep rho A / (|y_i| B))."""
    b = len(rewards)
    mean_r = sum(rewards) / b
    loss, grad, kept = 0.0, [], []
    for i in range(b):
        a = rewards[i] - mean_r
        kl = 0.0
        for t in range(lengths[i]):
            p = min(max(math.exp(mu[i][t]), 1e-6), 1 - 1e-6)
            q = min(max(math.exp(lp[i][t]), 1e-6), 1 - 1e-6)
            kl += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
        keep = max(kl / lengths[i], 0.0) <= delta
        kept.append(keep)
        row = []
        for t in range(lengths[i]):
            rho = math.exp(lp[i][t] - mu[i][t]) if keep else 0.0
            loss += -rho * a * lp[i][t] / lengths[i] / b
            row.append(-rho * a / lengths[i] / b)
        grad.append(row)
    return loss, grad, kept


@pytest.mark.parametrize("delta", [3e-3, 0.05, math.inf])
def test_flash_reinforce_loss_is_the_reference_value_and_gradient(delta):
    g = torch.Generator().manual_seed(7)
    lengths = [3, 1, 4, 2, 4]
    t_len = 4
    mask = _mask(lengths, t_len).double()
    mu = torch.log(torch.rand(5, t_len, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    # rows 0-1 near the behaviour policy, rows 2-4 farther: some pass the gate, some do not
    shift = torch.tensor([0.01, 0.02, 0.3, 0.8, 0.05], dtype=torch.float64).unsqueeze(-1)
    lp0 = (mu - shift * torch.rand(5, t_len, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    rewards = [1.0, 0.0, 1.0, 0.0, 1.0]
    lp = lp0.clone().requires_grad_(True)
    adv, _ = A.compute_advantages("flash_reinforce", rewards=torch.tensor(rewards, dtype=torch.float64), mask=mask)
    loss, metrics = A.policy_loss("flash_reinforce", logp=lp, old_logp=torch.zeros_like(lp0), advantages=adv,
                                  mask=mask, agg="seq-mean-token-mean", rollout_logp=mu, delta=delta)
    loss.backward()
    want, want_grad, kept = _flash_reference(lp0.tolist(), mu.tolist(), rewards, lengths, delta)
    assert loss.item() == pytest.approx(want, rel=1e-12, abs=1e-15)
    for i, n in enumerate(lengths):
        assert lp.grad[i, :n].tolist() == pytest.approx(want_grad[i], rel=1e-12, abs=1e-15)
        assert all(x == 0.0 for x in lp.grad[i, n:].tolist())
    assert metrics["flash_accept_frac"] == pytest.approx(sum(kept) / len(kept))
    if delta == math.inf:
        assert all(kept)
    if delta == 3e-3:
        assert 0 < sum(kept) < len(kept)  # the gate acts on this batch


def test_flash_reinforce_loss_behaviour_defaults_to_old_logp_and_rejects_bad_delta():
    mask = _mask([2, 3], 3)
    lp = torch.log(torch.tensor([[0.5, 0.4, 0.3], [0.2, 0.6, 0.7]]))
    adv = torch.tensor([[1.0], [-1.0]]) * mask
    a, _ = A.policy_loss("flash_reinforce", logp=lp, old_logp=lp - 0.01, advantages=adv, mask=mask)
    b, _ = A.policy_loss("flash_reinforce", logp=lp, old_logp=torch.zeros_like(lp), advantages=adv, mask=mask,
                         rollout_logp=lp - 0.01)
    assert a.item() == b.item()
    # on-policy the gate keeps everything and the loss is -mean_i mean_t A lp
    on, m = A.policy_loss("flash_reinforce", logp=lp, old_logp=lp, advantages=adv, mask=mask,
                          agg="seq-mean-token-mean")
    want = -(((adv * lp * mask).sum(-1) / mask.sum(-1)).mean())
    assert on.item() == pytest.approx(want.item(), rel=1e-6) and m["flash_accept_frac"] == 1.0
    assert m["clip_frac"] == 0.0
    with pytest.raises(ValueError, match="delta"):
        A.policy_loss("flash_reinforce", logp=lp, old_logp=lp, advantages=adv, mask=mask, delta=-1.0)


# ------------------------------------------------------------------------------ registries and the config


def test_new_names_are_registered_and_selectable_from_config():
    assert {"maxrl", "flash_reinforce"} <= set(A.ADVANTAGE_ESTIMATORS)
    from rlvr.config import group_relative

    assert group_relative("maxrl") and not group_relative("flash_reinforce")
    load_config("configs/grpo_arithmetic_tiny.yaml", ["algorithm.advantage_estimator=maxrl",
                                                      "algorithm.advantage_params={control_variate: false, "
                                                      "epsilon: 1.0e-6}"])
    load_config("configs/grpo_arithmetic_tiny.yaml", ["algorithm.policy_loss_params={importance_sampling_level: "
                                                      "sequence_sum, clip_ratio_c: null, log_ratio_clamp: null}",
                                                      "algorithm.loss_agg_mode=seq-mean-token-mean",
                                                      "algorithm.advantage_estimator=rloo"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)  # single rollout: no "group_size=1" warning
        load_config("configs/grpo_arithmetic_tiny.yaml", ["algorithm.advantage_estimator=flash_reinforce",
                                                          "rollout.group_size=1"])
    with pytest.warns(ConfigWarning, match="group_size=1"):
        load_config("configs/grpo_arithmetic_tiny.yaml", ["algorithm.advantage_estimator=maxrl",
                                                          "rollout.group_size=1"])
    with pytest.raises(ConfigError, match="is not a parameter of 'flash_reinforce'"):
        load_config("configs/grpo_arithmetic_tiny.yaml", ["algorithm.advantage_estimator=flash_reinforce",
                                                          "algorithm.advantage_params={epsilon: 1.0e-6}"])
