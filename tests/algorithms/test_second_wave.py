"""Second wave of the algorithm core (issue 13): each function against an independent computation."""

import math
import statistics

import pytest
import torch

from rlvr import algorithms as A
from rlvr.algorithms.policy_losses import vespo_gamma_weights



@pytest.fixture(autouse=True)
def _float64():
    """float64 for these tests only (a module-level default would leak into every later test)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ------------------------------------------------------------------------------ combiners


def _groups(group):
    out = {}
    for i, g in enumerate(group):
        out.setdefault(g, []).append(i)
    return out


def test_sum_then_normalize_hand_example():
    comps = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([2.0, 4.0])}
    r, w = A.combine_rewards("sum_then_normalize", comps, {"a": 2.0, "b": 0.5})
    assert r.tolist() == [3.0, 2.0]
    assert w["a"].tolist() == [2.0, 2.0]


def test_gdpo_matches_trl_formula_by_loops():
    g = torch.Generator().manual_seed(0)
    group = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    comps = {"acc": torch.randint(0, 2, (9,), generator=g).double(), "len": torch.rand(9, generator=g)}
    weights = {"acc": 1.0, "len": 0.3}
    got, _ = A.combine_rewards("normalize_then_sum", comps, weights, torch.tensor(group))
    s = [0.0] * 9
    for rows in _groups(group).values():
        for k, w in weights.items():
            vals = [float(comps[k][i]) for i in rows]
            mu, sd = statistics.mean(vals), statistics.stdev(vals)
            for i in rows:
                s[i] += w * (float(comps[k][i]) - mu) / (sd + 1e-4)
    mu, sd = statistics.mean(s), statistics.stdev(s)
    want = [(x - mu) / (sd + 1e-4) for x in s]
    assert got.tolist() == pytest.approx(want, abs=1e-12)
    assert "gdpo" in A.ADVANTAGE_LEVEL_COMBINERS and "sum_then_normalize" not in A.ADVANTAGE_LEVEL_COMBINERS


def test_dvao_weights_formula_and_constant_objective():
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    comps = {"acc": torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1]), "len": torch.tensor([0.2, 0.4, 0.9, 0.1, 0.3, 0.5, 0.7, 0.0])}
    w = {"acc": 0.7, "len": 0.3}
    got, eff = A.combine_rewards("dvao", comps, w, group)
    for rows in _groups(group.tolist()).values():
        sig = {k: statistics.stdev([float(comps[k][i]) for i in rows]) for k in w}
        mu = {k: statistics.mean([float(comps[k][i]) for i in rows]) for k in w}
        den = sum(w[k] * sig[k] for k in w)
        wt = {k: w[k] * sig[k] / den for k in w}  # w~_k (spec 11.1)
        for i in rows:
            a = sum(wt[k] * ((float(comps[k][i]) - mu[k]) / sig[k] if sig[k] > 0 else 0.0) for k in w)
            assert float(got[i]) == pytest.approx(a, abs=1e-12)
            assert float(eff["acc"][i]) == pytest.approx(wt["acc"])
    assert float(eff["acc"][4]) == 0.0 and float(eff["len"][4]) == pytest.approx(1.0)  # constant acc: weight 0
    flat, _ = A.combine_rewards("dvao", {"a": torch.ones(4)}, {"a": 1.0}, torch.tensor([0, 0, 1, 1]))
    assert flat.tolist() == [0.0] * 4


def test_tmn_hand_example():
    # one task, two prompts of 4 rollouts
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    got, _ = A.combine_rewards("tmn", {"c": r}, {"c": 1.0}, group, alpha=0.5, gamma=1.0)
    mu = [0.25, 0.75]
    var = [statistics.variance([1, 0, 0, 0]), statistics.variance([1, 1, 1, 0])]
    scale = math.sqrt(sum(var) / 2)
    mode = sum(mu) / 2
    want = []
    for u, rows in enumerate([range(4), range(4, 8)]):
        mt = 0.5 * mu[u] + 0.5 * mode
        p = sum(float(r[i]) > mt for i in rows) / 4
        for i in rows:
            a = (float(r[i]) - mu[u]) / (scale + 1e-6)
            a *= math.exp(0.5 - p) if float(r[i]) > mu[u] else math.exp(p - 0.5)
            want.append(a)
    assert got.tolist() == pytest.approx(want, abs=1e-12)


def test_pow3r_inferred_weights():
    group = torch.tensor([0, 0, 0])
    comps = {"a": torch.tensor([1.0, 0.0, 1.0]), "b": torch.tensor([1.0, 1.0, 1.0]), "c": torch.tensor([0.0, 1.0, 1.0])}
    r, eff = A.combine_rewards("pow3r", comps, {"a": 2.0, "b": 1.0, "c": 1.0}, group,
                               categories={"a": "x", "b": "x", "c": "y"})
    assert float(eff["b"][0]) == 0.0  # saturated criterion: no weight
    assert float(eff["a"][0]) == pytest.approx(3.0)  # category x keeps its human total 2 + 1
    assert float(eff["c"][0]) == pytest.approx(1.0)
    assert r.tolist() == pytest.approx([3.0, 1.0, 4.0])


def test_identity_estimator_broadcasts():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv, ret = A.compute_advantages("identity", rewards=torch.tensor([0.5, -2.0]), mask=mask)
    assert adv.tolist() == [[0.5, 0.5, 0.0], [-2.0, 0.0, 0.0]] and ret is None


# ----------------------------------------------------------------------- dynamic weights


def _grid_hv(points, ref, step=0.5, hi=4.0):
    """Independent hypervolume: count grid cells (2-D) dominated by some point."""
    n = int(hi / step)
    area = 0.0
    for i in range(n):
        for j in range(n):
            cx, cy = ref[0] + (i + 0.5) * step, ref[1] + (j + 0.5) * step
            if any(cx < p[0] and cy < p[1] for p in points):
                area += step * step
    return area


def test_hypervolume_and_contribution_against_grid():
    pts = [[1.0, 2.0], [2.0, 1.0]]
    assert A.hypervolume(torch.tensor(pts), torch.tensor([0.0, 0.0])) == pytest.approx(3.0)
    assert A.hypervolume(torch.tensor(pts), torch.tensor([0.0, 0.0])) == pytest.approx(_grid_hv(pts, [0, 0]))
    buf = [[0.0, 0.0]] + pts
    d = A.hypervolume_contribution([1.5, 1.5], buf)
    assert d == pytest.approx(_grid_hv(pts + [[1.5, 1.5]], [0, 0]) - _grid_hv(pts, [0, 0]))
    assert d == pytest.approx(0.25)
    assert A.hypervolume_contribution([0.5, 0.5], buf) == 0.0  # dominated: no contribution
    # minimisation flag: (len) smaller is better
    assert A.hypervolume_contribution([1.0, -1.0], [[0.0, 0.0]], minimize=[False, True]) == pytest.approx(1.0)
    assert A.hv_meta_reward(0.0) == 0.5 and A.hv_meta_reward(100.0) == pytest.approx(2.0)


def test_gradient_weight_update_hand():
    w = torch.tensor([0.5, 0.5])
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # I = [1, 4]
    got = A.gradient_weight_update(w, grads, lr=1e-5, reg=1e-5)
    e = [math.exp(math.log(0.5) + 1), math.exp(math.log(0.5) + 4)]
    assert got.tolist() == pytest.approx([e[0] / sum(e), e[1] / sum(e)])


# ----------------------------------------------------------------------------- Lagrangian


def test_lagrangian_mixed_advantage_modes():
    a_obj = torch.tensor([[1.0, 2.0]])
    a_con = torch.tensor([[[3.0, -1.0]]])
    s = torch.tensor([0.25])
    got = A.lagrangian_mixed_advantage(a_obj, a_con, s, torch.tensor([1.0]))
    assert got[0].tolist() == pytest.approx([0.75 * 1 + 0.25 * 3, 0.75 * 2 - 0.25])  # mode "task"
    # mode "all": objective A_task + A_con, both constraints <=
    at, ac = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    s2 = torch.tensor([0.3, 0.6])
    got = A.lagrangian_mixed_advantage(at + ac, torch.stack([at, ac]), s2, torch.tensor([-1.0, -1.0]))
    want = (2 - 0.9) * 3.0 - 0.3 * 1.0 - 0.6 * 2.0
    assert float(got) == pytest.approx(want)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "none"])
def test_multiplier_grad_matches_autograd(kind):
    lam = torch.tensor([0.3, -0.7], requires_grad=True)
    vals, thr, sign = torch.tensor([0.5, 0.9]), torch.tensor([0.8, 0.4]), torch.tensor([1.0, -1.0])
    (g,) = torch.autograd.grad(A.multiplier_loss(lam, vals, thr, sign, kind), lam)
    assert A.multiplier_loss_grad(lam.detach(), vals, thr, sign, kind).tolist() == pytest.approx(g.tolist())
    # a violated >= constraint (0.5 < 0.8) raises its multiplier under descent
    assert float(g[0]) < 0


def test_lagrange_controller_hand_sequence_and_checkpoint():
    from rlvr.config import ConstraintSpec
    from rlvr.control.controllers import LagrangeConstraints

    spec = ConstraintSpec(threshold=0.8, lr=0.5, momentum=0.5)
    c = LagrangeConstraints({"fmt": spec})
    lam, v = 0.0, 0.0
    for value in [0.5, 0.6, 0.9]:
        s = 1 / (1 + math.exp(-lam))
        g = s * (1 - s) * (value - 0.8)
        v = 0.5 * v + g
        lam = lam - 0.5 * v
        c.update(torch.tensor([value]))
        assert float(c.lam[0]) == pytest.approx(lam)
    c2 = LagrangeConstraints({"fmt": spec})
    c2.load_state_dict(c.state_dict())
    assert float(c2.lam[0]) == float(c.lam[0]) and float(c2.velocity[0]) == float(c.velocity[0])


# ----------------------------------------------------------------------------- controllers


def test_adaptive_kl_hand_sequence():
    coef = 0.1
    for kl in [0.05, 0.5, 0.1]:
        err = max(-0.2, min(0.2, kl / 0.1 - 1))
        want = coef * (1 + err * 64 / 1000)
        coef = A.adaptive_kl_update(coef, kl, 0.1, 1000, 64)
        assert coef == pytest.approx(want)
    assert A.adaptive_kl_update(1.0, 0.3, 0.1, 100, 100) == pytest.approx(1.2)  # clipped at +20%


def test_adaptive_entropy_hand_sequence_and_callback_state():
    from rlvr.control.callbacks import AdaptiveEntropyControl

    class L:
        entropy_coef = 0.0

    cb, learner = AdaptiveEntropyControl(0.01, target=1.0, delta=0.01, coef_min=0.0, coef_max=0.025), L()
    cb.on_train_begin(learner)
    assert learner.entropy_coef == 0.0  # no measurement yet (TRL: last entropy = inf)
    seq = [(0.8, 0.02, 0.02), (0.9, 0.025, 0.025), (1.5, 0.015, 0.0)]  # (entropy, coef, applied)
    for ent, coef, applied in seq:
        cb.on_step_end(0, learner, None, {"entropy_token_mean": ent})
        assert cb.coef == pytest.approx(coef) and learner.entropy_coef == pytest.approx(applied)
    cb2 = AdaptiveEntropyControl(0.0, 1.0, 0.01, 0.0, 1.0)
    cb2.load_state_dict(cb.state_dict())
    assert (cb2.coef, cb2.last_entropy) == (cb.coef, cb.last_entropy)


# ---------------------------------------------------------------------- KL estimator clamps


def test_k3_clamps_are_parameters_and_abs_plus():
    lp = torch.tensor([[0.0, -30.0]])
    ref = torch.tensor([[-15.0, 0.0]])
    u = lp - ref
    exact = torch.exp(-u) - 1 + u
    dflt = A.kl_penalty(lp, ref, "k3")
    assert float(exact[0, 0]) > 10 and float(dflt[0, 0]) == 10.0  # verl's value clamp at 10
    assert float(exact[0, 1]) > 1e12 and float(dflt[0, 1]) == 10.0  # log-ratio 30 clamped to 20, then 10
    off = A.kl_penalty(lp, ref, "k3", value_clamp=None, log_ratio_clamp=None)
    assert off[0].tolist() == pytest.approx(exact[0].tolist(), rel=1e-12)
    assert A.kl_params("k3", {"value_clamp": None, "foo": 1}) == {"value_clamp": None}
    assert A.kl_params("k1", {"value_clamp": None}) == {}
    x = torch.tensor([[0.3, -0.2]], requires_grad=True)
    v = A.kl_penalty(x, torch.zeros(1, 2), "abs+")
    assert v[0].tolist() == pytest.approx([0.3, 0.2])
    (g,) = torch.autograd.grad(v.sum(), x)
    assert g[0].tolist() == pytest.approx([0.3, -0.2])  # k2's gradient u


def test_kl_table_shows_the_clamp_case():
    from rlvr.algorithms.kl_table import clamp_table

    on, off, mass = clamp_table()
    on, off = {(r.estimator, r.placement): r for r in on}, {(r.estimator, r.placement): r for r in off}
    assert mass > 0
    assert not on[("k3", "reward+loss")].unbiased and off[("k3", "reward+loss")].unbiased


# ------------------------------------------------------------------------------ token weights


def test_opsm_hand():
    lp = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])
    roll = torch.tensor([[-0.2, -0.2], [-0.2, -0.2], [-1.1, -1.1]])  # mean KL 0.8, 0.8, -0.1
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    w = A.token_weights("opsm", advantages=adv, logp=lp, old_logp=lp, mask=torch.ones(3, 2), rollout_logp=roll,
                        threshold=0.5)
    assert w.tolist() == [[1, 1], [0, 0], [1, 1]]


def test_top_entropy_keeps_the_top_share():
    ent = torch.tensor([[0.1, 0.5, 0.9, 0.0], [0.3, 0.7, 0.2, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    w = A.token_weights("top_entropy", advantages=torch.zeros(2, 4), logp=torch.zeros(2, 4),
                        old_logp=torch.zeros(2, 4), mask=mask, entropy=ent, quantile=0.5)
    vals = sorted([0.1, 0.5, 0.9, 0.0, 0.3, 0.7, 0.2])
    thr = torch.quantile(torch.tensor(vals), 0.5)
    want = [[float(e >= thr and m) for e, m in zip(er, mr)] for er, mr in zip(ent.tolist(), mask.tolist())]
    assert w.tolist() == want and w.sum() == 4 and w[1, 3] == 0


def test_steer_weights_hand():
    lp = torch.log(torch.tensor([[0.5, 0.9]]))
    old = torch.log(torch.tensor([[0.25, 0.9]]))
    ent = torch.tensor([[1.0, 0.2]])
    adv = torch.tensor([[1.0, 1.0]])
    w = A.token_weights("steer", advantages=adv, logp=lp, old_logp=old, mask=torch.ones(1, 2), entropy=ent)
    om = [(1 / 0.25) * 0.5 * 0.5 * (math.log(0.5) + 1.0), (1 / 0.9) * 0.9 * 0.1 * (math.log(0.9) + 0.2)]
    k = -math.log(0.8) / max(max(abs(o) for o in om), 0.02)
    want = [min(1.0, max(0.8, math.exp(-k * abs(o)))) for o in om]
    assert w[0].tolist() == pytest.approx(want)
    assert float(w[0, 0]) == pytest.approx(0.8)  # the largest |Omega| gets w_min


# ------------------------------------------------------------------- exploration / plasticity


def test_imentor_bonus_hand():
    b = A.imentor_bonus(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([0.0, 0.0, 1.0]), scale=0.5)
    assert b.tolist() == pytest.approx([0.0, 0.25, 0.0])
    assert A.imentor_bonus(torch.ones(3), torch.zeros(3), 1.0).tolist() == [0.0] * 3


def test_dormant_and_grama_scores_hand():
    s, r = A.dormant_scores(torch.tensor([0.0, 1.0, 2.0, 1.0]), tau=0.1)
    assert s.tolist() == pytest.approx([0.0, 1.0, 2.0, 1.0], abs=1e-6) and r == 0.25
    s, r = A.grama_scores(torch.tensor([0.01, 1.0, 1.0, 1.99]), tau=0.05)
    assert r == 0.25


# ---------------------------------------------------------------------------------- TRL parity


def _trl_loss(loss_type, lp, old, ref, adv, mask, beta, level, eps_lo=0.2, eps_hi=0.2, max_len=None,
              tau_pos=1.0, tau_neg=1.05):
    """TRL ``GRPOTrainer._compute_loss`` (commit f2cd577) transcribed: no clamps, k3 unclamped."""
    advantages = adv.unsqueeze(1)
    log_ratio = lp - old
    if level == "token":
        liw = log_ratio
    else:
        liw = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(liw)
    if beta != 0.0:
        kl = torch.exp(ref - lp) - (ref - lp) - 1
    if loss_type == "cispo":
        per = -torch.clamp(coef_1, max=eps_hi).detach() * advantages * lp
    elif loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
        coef_2 = torch.clamp(coef_1, 1 - eps_lo, 1 + eps_hi)
        per = -torch.min(coef_1 * advantages, coef_2 * advantages)
    elif loss_type == "sapo":
        t = torch.where(advantages > 0, tau_pos, tau_neg)
        per = -torch.sigmoid(t * (coef_1 - 1)) * 4 / t * advantages
    if beta != 0.0:
        per = per + beta * kl
    if loss_type in ("grpo", "sapo"):
        return ((per * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per * mask).sum() / (per.size(0) * max_len)
    if loss_type in ("cispo", "dapo"):
        return (per * mask).sum() / mask.sum()
    if loss_type == "luspo":
        return (per * mask.sum(1, keepdim=True)).mean()


#: TRL loss_type -> (rlvr policy loss, aggregation, hp)
TRL_MAP = {
    "grpo": ("vanilla", "seq-mean-token-mean", {"clip_ratio_c": None}),
    "bnpo": ("vanilla", "token-mean", {"clip_ratio_c": None}),
    "dr_grpo": ("vanilla", "seq-mean-token-sum-norm", {"clip_ratio_c": None}),
    "dapo": ("vanilla", "token-mean", {"clip_ratio_c": None, "clip_ratio_high": 0.28}),
    "cispo": ("cispo", "token-mean", {"clip_ratio_max": 5.0}),
    "sapo": ("sapo", "seq-mean-token-mean", {}),
    "luspo": ("luspo", "seq-mean-token-sum", {}),
}


def _case(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 5
    mask = torch.ones(B, T)
    mask[1, 3:] = 0
    mask[3, 1:] = 0
    old = -torch.rand(B, T, generator=g) * 3
    lp = old + torch.randn(B, T, generator=g) * 0.6
    lp[0, 1] = old[0, 1] + 24.0  # a far-off-policy token: |log ratio| > 20, where the clamp bites
    lp[2, 2] = old[2, 2] - 23.0
    ref = lp.detach() + torch.randn(B, T, generator=g) * 0.5
    ref[0, 1] = lp[0, 1] - 15.0  # k3 > 10 here: the value clamp bites
    adv = torch.tensor([1.0, -0.5, -1.5, 0.7])
    return lp, old, ref, adv, mask


def _rlvr_loss(loss_type, level, lp, old, ref, adv, mask, beta, clamps_off):
    name, agg, hp = TRL_MAP[loss_type]
    hp = dict(hp)
    if clamps_off:
        hp["log_ratio_clamp"] = None
    if level == "sequence" and name != "luspo":
        hp["importance_sampling_level"] = "sequence"
    if loss_type == "dapo":
        pass
    norm = dict(norm_constant=mask.shape[1]) if agg == "seq-mean-token-sum-norm" else {}
    loss, _ = A.policy_loss(name, logp=lp, old_logp=old, advantages=adv.unsqueeze(-1) * mask, mask=mask, agg=agg,
                            **norm, **hp)
    if beta:
        kl_hp = {"value_clamp": None, "log_ratio_clamp": None} if clamps_off else {}
        loss = loss + beta * A.aggregate_loss(A.kl_penalty(lp, ref, "k3", **kl_hp), mask, agg, **norm)
    return loss


@pytest.mark.parametrize("loss_type", list(TRL_MAP))
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_trl_parity_with_clamps_off(loss_type, beta, level):
    if loss_type == "luspo" and level == "token":
        pytest.skip("TRL's luspo is sequence level (it warns otherwise); rlvr's luspo always is")
    if loss_type == "luspo" and beta:
        pytest.skip("TRL luspo + beta averages (l_i + beta kl_it) |y_i| over all B x T entries, padding "
                    "included (no mask); rlvr adds beta * seq-mean-token-sum(kl) over valid tokens "
                    "(docs/algorithms.md, TRL parity)")
    if level == "sequence" and loss_type in ("bnpo", "dr_grpo", "dapo", "cispo"):
        pass  # TRL allows it (with a warning): the sequence value is summed over the tokens
    eps_hi = {"dapo": 0.28, "cispo": 5.0}.get(loss_type, 0.2)
    for seed in range(3):
        lp, old, ref, adv, mask = _case(seed)
        lp1 = lp.clone().requires_grad_(True)
        want = _trl_loss(loss_type, lp1, old, ref, adv, mask, beta, "sequence" if loss_type == "luspo" else level,
                         eps_hi=eps_hi, max_len=mask.shape[1])
        (g_want,) = torch.autograd.grad(want, lp1)
        lp2 = lp.clone().requires_grad_(True)
        got = _rlvr_loss(loss_type, level, lp2, old, ref, adv, mask, beta, clamps_off=True)
        (g_got,) = torch.autograd.grad(got, lp2)
        assert float(got) == pytest.approx(float(want), rel=1e-10, abs=1e-12), (loss_type, seed)
        assert torch.allclose(g_got * mask, g_want * mask, rtol=1e-9, atol=1e-12), (loss_type, seed)


@pytest.mark.parametrize("loss_type", ["bnpo", "sapo", "cispo"])
def test_default_clamps_change_far_off_policy_tokens(loss_type):
    """The verl clamps (on by default) are what separates rlvr from TRL on these tokens: this test fails
    if the clamp stopped being applied or stopped being switchable."""
    lp, old, ref, adv, mask = _case(0)
    beta = 0.04
    lp1 = lp.clone().requires_grad_(True)
    want = _trl_loss(loss_type, lp1, old, ref, adv, mask, beta, "token", eps_hi=5.0 if loss_type == "cispo" else 0.2)
    on = _rlvr_loss(loss_type, "token", lp.clone().requires_grad_(True), old, ref, adv, mask, beta, clamps_off=False)
    assert abs(float(on) - float(want)) > 1e-6


def test_default_clamps_follow_verl():
    """Defaults (clamps on) equal verl's formulas: exp(clamp(lp - old, -20, 20)) in the ratio and
    clamp(k3, -10, 10) with the log-ratio clamped to +-20."""
    lp, old, ref, adv, mask = _case(1)
    a = adv.unsqueeze(-1) * mask
    loss, _ = A.policy_loss("vanilla", logp=lp, old_logp=old, advantages=a, mask=mask, clip_ratio_c=None)
    ratio = torch.exp(torch.clamp(lp - old, -20, 20))
    per = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 0.8, 1.2))
    assert float(loss) == pytest.approx(float((per * mask).sum() / mask.sum()))
    k = torch.clamp(ref - lp, -20, 20)
    assert torch.allclose(A.kl_penalty(lp, ref, "k3"), torch.clamp(torch.exp(k) - k - 1, -10, 10))


def test_sequence_level_ratio_equals_gspo_sequence_gradient():
    """importance_sampling_level=sequence with seq-mean-token-mean is GSPO's sequence objective: its
    gradient equals the gspo loss's (GSPO-token form) for outcome advantages."""
    lp, old, _, adv, mask = _case(2)
    lp = old + (lp - old).clamp(-1e-4, 1e-4)  # inside GSPO's narrow clip, both are unclipped
    a = adv.unsqueeze(-1) * mask
    x1 = lp.clone().requires_grad_(True)
    l1, _ = A.policy_loss("vanilla", logp=x1, old_logp=old, advantages=a, mask=mask, agg="seq-mean-token-mean",
                          importance_sampling_level="sequence", clip_ratio_low=3e-4, clip_ratio_high=4e-4,
                          clip_ratio_c=None)
    x2 = lp.clone().requires_grad_(True)
    l2, _ = A.policy_loss("gspo", logp=x2, old_logp=old, advantages=a, mask=mask, agg="seq-mean-token-mean")
    (g1,), (g2,) = torch.autograd.grad(l1, x1), torch.autograd.grad(l2, x2)
    assert float(l1) == pytest.approx(float(l2)) and torch.allclose(g1 * mask, g2 * mask)


def test_vespo_weights_and_gradient():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0]])
    adv = torch.tensor([[1.0, 1.0]])
    mask = torch.ones(1, 2)
    phi = vespo_gamma_weights(adv, lp, old, mask)
    assert phi[0].tolist() == pytest.approx([1.0, 1.0])  # phi(1) = 1
    loss, _ = A.policy_loss("vespo", logp=lp, old_logp=old, advantages=adv, mask=mask)
    (g,) = torch.autograd.grad(loss, lp)
    assert g[0].tolist() == pytest.approx([-0.5, -0.5])  # -phi A / N_tok
    # off-policy: w = exp(0.3), k = 2, lambda = 3 -> phi = exp(3 + 2*0.3 - 3 e^0.3)
    lp2 = torch.tensor([[-0.8, -1.9]])
    phi2 = vespo_gamma_weights(adv, lp2, old, mask)
    assert float(phi2[0, 0]) == pytest.approx(math.exp(3 + 0.6 - 3 * math.exp(0.3)))
    neg = vespo_gamma_weights(-adv, lp2, old, mask)
    assert float(neg[0, 0]) == pytest.approx(math.exp(2 + 0.9 - 2 * math.exp(0.3)))


def test_log_ratio_clamp_is_a_parameter_of_every_ratio_loss():
    import inspect

    for name in ("vanilla", "decoupled_ppo", "gspo", "cispo", "dispo", "sapo", "clip_cov", "kl_cov", "luspo"):
        assert "log_ratio_clamp" in inspect.signature(A.POLICY_LOSSES[name]).parameters, name
    with pytest.raises(ValueError, match="importance_sampling_level"):
        A.policy_loss("vanilla", logp=torch.zeros(1, 1), old_logp=torch.zeros(1, 1), advantages=torch.zeros(1, 1),
                      mask=torch.ones(1, 1), importance_sampling_level="seq")
