"""verl 0.9.1's newer functions under verl's names (issue 29, item 1): each against an independent
computation written here from the published formulas (python loops over floats, closed forms), with the
edge cases verl handles: singleton groups, empty rows, zero tails, far-off-policy ratios, batch
normalisation."""

import math
import statistics

import pytest
import torch

from rlvr import algorithms as A
from rlvr.config import ConfigError, load_config


@pytest.fixture(autouse=True)
def _float64():
    """float64 for these tests only (a module-level default would leak into every later test)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _groups(group):
    out = {}
    for i, g in enumerate(group):
        out.setdefault(g, []).append(i)
    return out


def _close(actual, expected, tol=1e-9):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=tol, rtol=tol), (actual, expected)


def _mask(lengths, t_len):
    return torch.tensor([[1.0 if t < n else 0.0 for t in range(t_len)] for n in lengths])


# ---------------------------------------------------------------------------------- clip_by_value


def test_clip_by_value_elementwise_tensor_bounds():
    x = torch.tensor([[-3.0, 0.5, 7.0], [1.0, 2.0, -1.0]])
    lo = torch.tensor([[-1.0, 0.0, 0.0], [2.0, 0.0, -5.0]])
    hi = torch.tensor([[1.0, 0.2, 10.0], [1.5, 3.0, -4.0]])  # row 1: lo > hi at columns 0 and 2
    out = A.clip_by_value(x, lo, hi)
    expected = [[max(min(x[i, j].item(), hi[i, j].item()), lo[i, j].item()) for j in range(3)] for i in range(2)]
    _close(out, expected)
    assert out[1, 0].item() == 2.0 and out[1, 2].item() == -4.0  # the lower bound wins when lo > hi
    _close(A.clip_by_value(x, -0.5, torch.tensor([1.0, 1.0, 2.0])), [[-0.5, 0.5, 2.0], [1.0, 1.0, -0.5]])


# ---------------------------------------------------------------------- sum_pi_squared_from_logits


@pytest.mark.parametrize("chunk", [1, 3, 7, 10_000])
def test_sum_pi_squared_matches_direct_softmax(chunk):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 11, generator=g) * 4
    z[0, 0, :5] = -math.inf  # masked vocabulary entries
    z[1, 2] = z[1, 2] + 800.0  # large logits: a shift does not change the distribution
    direct = (torch.softmax(z, dim=-1) ** 2).sum(-1)
    out = A.sum_pi_squared_from_logits(z, chunk)
    _close(out, direct, tol=1e-12)
    one_hot = torch.full((1, 1, 4), -math.inf)
    one_hot[0, 0, 2] = 0.0
    _close(A.sum_pi_squared_from_logits(one_hot), [[1.0]])
    _close(A.sum_pi_squared_from_logits(torch.zeros(2, 6)), [1 / 6, 1 / 6])  # uniform: V * (1/V)^2
    view = (torch.randn(3, 9, 9, generator=g) * 3)[:, 2:-1]  # non-contiguous, as the learner's completion logits
    _close(A.sum_pi_squared_from_logits(view, chunk), (torch.softmax(view, -1) ** 2).sum(-1), tol=1e-12)


def test_sum_pi_squared_never_holds_more_than_chunk_positions(monkeypatch):
    seen = []
    real = torch.logsumexp

    def spy(x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(torch, "logsumexp", spy)
    monkeypatch.setattr(torch, "softmax", lambda *a, **k: pytest.fail("no softmax of the logits"))
    z = torch.randn(4, 6, 9, requires_grad=True)
    out = A.sum_pi_squared_from_logits(z, chunk=5)
    assert seen and all(shape[0] <= 5 and len(shape) == 2 for shape in seen)
    assert out.shape == (4, 6) and not out.requires_grad
    low = A.sum_pi_squared_from_logits(z.detach().to(torch.bfloat16))
    assert low.dtype == torch.float32
    with pytest.raises(ValueError, match="chunk"):
        A.sum_pi_squared_from_logits(z, chunk=0)


# ---------------------------------------------------------------------------------- grpo_passk


def _passk_ref(rewards, group, eps, norm):
    adv = [0.0] * len(rewards)
    for rows in _groups(group).values():
        vals = [rewards[i] for i in rows]
        order = sorted(rows, key=lambda i: -rewards[i])  # stable: first of equal maxima
        gap = rewards[order[0]] - rewards[order[1]]
        if norm:
            gap = gap / (statistics.stdev(vals) + eps)
        adv[order[0]] = gap
    return adv


@pytest.mark.parametrize("norm", [True, False])
def test_grpo_passk_against_loop(norm):
    rewards = [1.0, 0.0, 0.5, 0.25, 0.0, 2.0, 2.0, 1.0, -1.0, 3.0]
    group = [7, 7, 7, 3, 3, 9, 9, 9, 3, 5]  # non-contiguous ids; group 9 has a tied maximum
    group[-1] = 7  # and group 7 now has four members
    lengths = [3, 2, 4, 1, 0, 2, 2, 3, 4, 2]  # row 4 is empty
    mask = _mask(lengths, 4)
    adv, ret = A.compute_advantages("grpo_passk", rewards=torch.tensor(rewards), mask=mask,
                                    group=torch.tensor(group), epsilon=1e-6, norm_adv_by_std_in_grpo=norm)
    ref = _passk_ref(rewards, group, 1e-6, norm)
    _close(adv, [[ref[i] * mask[i, t].item() for t in range(4)] for i in range(len(rewards))])
    assert ret is None
    # by hand: group 7 = rows 0, 1, 2, 9 with rewards 1, 0, .5, 3 -> only row 9 gets 3 - 1 = 2 (/ stdev)
    sd = statistics.stdev([1.0, 0.0, 0.5, 3.0])
    assert adv[9, 0].item() == pytest.approx(2.0 / (sd + 1e-6) if norm else 2.0)
    assert adv[5:8].abs().sum().item() == 0.0  # tied maximum: nobody is credited


def test_grpo_passk_token_rewards_and_singleton_error():
    mask = _mask([2, 3, 1], 3)
    tr = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
    adv, _ = A.compute_advantages("grpo_passk", token_rewards=tr, mask=mask, group=torch.tensor([0, 0, 0]),
                                  norm_adv_by_std_in_grpo=False)
    _close(adv, [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="at least 2 responses per group"):
        A.compute_advantages("grpo_passk", rewards=torch.tensor([1.0, 0.0, 1.0]), mask=mask,
                             group=torch.tensor([0, 0, 1]))


# ----------------------------------------------------------------------------------- gdpo_verl


def _grpo_row_ref(values, group, eps, norm):
    out = [0.0] * len(values)
    for rows in _groups(group).values():
        vals = [values[i] for i in rows]
        mean, sd = (0.0, 1.0) if len(rows) == 1 else (statistics.fmean(vals), statistics.stdev(vals))
        for i in rows:
            out[i] = (values[i] - mean) / (sd + eps) if norm else values[i] - mean
    return out


def _whiten_tokens_ref(row_values, mask):
    cells = [(i, t) for i in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[i, t] != 0]
    vals = [row_values[i] for i, _ in cells]
    mean = statistics.fmean(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    out = [[0.0] * mask.shape[1] for _ in range(mask.shape[0])]
    for i, t in cells:
        out[i][t] = (row_values[i] - mean) / math.sqrt(var + 1e-8)
    return out


@pytest.mark.parametrize("norm", [True, False])
def test_gdpo_verl_whitens_over_tokens(norm):
    correct = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    fmt = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    group = [0, 0, 0, 1, 1, 1, 2]  # group 2 is a singleton (mean 0, std 1)
    lengths = [4, 1, 3, 2, 0, 4, 2]  # row 4 is empty
    mask = _mask(lengths, 4)
    w = {"correct": 1.0, "format": 0.5}
    adv, ret = A.compute_advantages(
        "gdpo_verl", rewards=torch.zeros(7), mask=mask, group=torch.tensor(group), epsilon=1e-6,
        norm_adv_by_std_in_grpo=norm, reward_components={"correct": torch.tensor(correct), "format": torch.tensor(fmt)},
        gdpo_reward_weights=[1.0, 0.5])
    a_c = _grpo_row_ref(correct, group, 1e-6, norm)
    a_f = _grpo_row_ref(fmt, group, 1e-6, norm)
    s = [w["correct"] * a_c[i] + w["format"] * a_f[i] for i in range(7)]
    _close(adv, _whiten_tokens_ref(s, mask))
    assert ret is None
    same, _ = A.compute_advantages(
        "gdpo_verl", rewards=torch.zeros(7), mask=mask, group=torch.tensor(group), norm_adv_by_std_in_grpo=norm,
        reward_components={"format": torch.tensor(fmt), "correct": torch.tensor(correct), "extra": torch.ones(7)},
        gdpo_reward_keys=["correct", "format"], gdpo_reward_weights=w)
    _close(same, adv)


def test_verl_name_gdpo_is_the_verl_estimator_and_the_combiner_keeps_trl_s():
    # spec api.md: compute_advantages("gdpo", ...) is verl's estimator; reward.combine "gdpo" stays TRL's combiner
    assert A.ADVANTAGE_ESTIMATORS["gdpo"] is A.ADVANTAGE_ESTIMATORS["gdpo_verl"]
    assert A.REWARD_COMBINERS["gdpo"] is A.REWARD_COMBINERS["normalize_then_sum"]
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    comps = {"a": torch.tensor([1.0, 0.0, 1.0, 1.0]), "b": torch.tensor([0.0, 0.0, 1.0, 0.0])}
    a, _ = A.compute_advantages("gdpo", rewards=comps["a"], mask=mask, group=torch.tensor([0, 0, 1, 1]),
                                reward_components=comps, gdpo_reward_weights=[1.0, 0.5])
    b, _ = A.compute_advantages("gdpo_verl", rewards=comps["a"], mask=mask, group=torch.tensor([0, 0, 1, 1]),
                                reward_components=comps, gdpo_reward_weights=[1.0, 0.5])
    assert torch.equal(a, b) and a.abs().sum() > 0


def test_gdpo_verl_fallback_and_difference_from_trl_gdpo():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    group = [0, 0, 0, 1, 1, 1]
    lengths = [5, 1, 1, 2, 2, 5]
    mask = _mask(lengths, 5)
    adv, _ = A.compute_advantages("gdpo_verl", rewards=torch.tensor(rewards), mask=mask, group=torch.tensor(group))
    _close(adv, _whiten_tokens_ref(_grpo_row_ref(rewards, group, 1e-6, True), mask))
    # rlvr's existing `gdpo` is TRL's combiner (row whitening); it is unchanged and differs here
    assert A.REWARD_COMBINERS["gdpo"] is A.normalize_then_sum
    trl, _ = A.combine_rewards("gdpo", {"r": torch.tensor(rewards)}, {"r": 1.0}, torch.tensor(group))
    a_trl = [_grpo_row_ref(rewards, group, 1e-4, True)[i] for i in range(6)]
    mean, sd = statistics.fmean(a_trl), statistics.stdev(a_trl)
    _close(trl, [(a - mean) / (sd + 1e-4) for a in a_trl], tol=1e-9)
    assert (adv[:, 0] - trl).abs().max().item() > 0.05
    with pytest.raises(ValueError, match="2 entries for 1"):
        A.compute_advantages("gdpo_verl", rewards=torch.tensor(rewards), mask=mask,
                             reward_components={"r": torch.tensor(rewards)}, gdpo_reward_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="not in reward_components"):
        A.compute_advantages("gdpo_verl", rewards=torch.tensor(rewards), mask=mask,
                             reward_components={"r": torch.tensor(rewards)}, gdpo_reward_keys=["q"])


# ------------------------------------------------------------------------- optimal token baseline


def _otb_parts(tr, mask, lp, spq, rho):
    b, t_len = len(mask), len(mask[0])
    ret = [[sum(tr[i][s] * mask[i][s] for s in range(t, t_len)) for t in range(t_len)] for i in range(b)]
    w_cum = []
    for i in range(b):
        acc, row = 0.0, []
        for t in range(t_len):
            w = 1.0 - 2.0 * math.exp(lp[i][t]) + spq[i][t]
            if rho is not None:
                w *= rho[i][t] ** 2
            acc += w * mask[i][t]
            row.append(acc)
        w_cum.append(row)
    return ret, w_cum


def _zero_tail(lengths_by_row):
    """(row, second) of the strictly longest member, or None."""
    ls = sorted(lengths_by_row.values())
    top = [i for i, n in lengths_by_row.items() if n == ls[-1]]
    if len(top) == 1 and ls[-1] > ls[-2]:
        return top[0], ls[-2]
    return None


def _otb_ref(tr, mask, group, lp, spq, rho, zero_tail, eps=1e-8):
    b, t_len = len(mask), len(mask[0])
    ret, w_cum = _otb_parts(tr, mask, lp, spq, rho)
    base = [[0.0] * t_len for _ in range(b)]
    for rows in _groups(group).values():
        if len(rows) == 1:
            continue
        for t in range(t_len):
            num = sum(ret[i][t] * w_cum[i][t] * mask[i][t] for i in rows)
            den = sum(w_cum[i][t] * mask[i][t] for i in rows) + eps
            for i in rows:
                base[i][t] = num / den
        tail = _zero_tail({i: sum(mask[i]) for i in rows}) if zero_tail else None
        if tail is not None:
            for t in range(int(tail[1]), t_len):
                base[tail[0]][t] = 0.0
    adv = [[(ret[i][t] - base[i][t]) * mask[i][t] for t in range(t_len)] for i in range(b)]
    return adv, ret


def _tir_ref(tr, mask, group, lp, spq, rho, zero_tail, eps=1e-8):
    b, t_len = len(mask), len(mask[0])
    ret, w_cum = _otb_parts(tr, mask, lp, spq, rho)
    pos = [[t for t in range(t_len) if mask[i][t] != 0] for i in range(b)]  # the j-th valid token of row i
    adv = [[0.0] * t_len for _ in range(b)]
    for rows in _groups(group).values():
        rows = [i for i in rows if pos[i]]
        width = max((len(pos[i]) for i in rows), default=0)
        base = {i: [0.0] * width for i in rows}
        if len(rows) >= 2:
            for j in range(width):
                num = sum(ret[i][pos[i][j]] * w_cum[i][pos[i][j]] for i in rows if j < len(pos[i]))
                den = sum(w_cum[i][pos[i][j]] for i in rows if j < len(pos[i])) + eps
                for i in rows:
                    base[i][j] = num / den
            tail = _zero_tail({i: len(pos[i]) for i in rows}) if zero_tail else None
            if tail is not None:
                for j in range(tail[1], width):
                    base[tail[0]][j] = 0.0
        for i in rows:
            for j, t in enumerate(pos[i]):
                adv[i][t] = ret[i][t] - base[i][j]
    return adv, ret


def _otb_batch(seed=0, b=14, t_len=6):
    g = torch.Generator().manual_seed(seed)
    lengths = [6, 3, 5, 6, 2, 0, 4, 1, 6, 3, 0, 5, 5, 2]
    mask = _mask(lengths, t_len)
    mask[2, 1] = 0.0  # interior zeros (tool output)
    mask[8, 2] = mask[8, 3] = 0.0
    # group 2 is a singleton; row 5 (group 1) is empty; group 4 = one response + an empty one; group 5 has
    # two longest responses (5 tokens each): no zero tail there
    group = [0, 0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 5, 5, 5]
    tr = torch.randn(b, t_len, generator=g) * (torch.rand(b, t_len, generator=g) < 0.4)
    lp = -torch.rand(b, t_len, generator=g) * 3.0
    spq = torch.rand(b, t_len, generator=g) * 0.6 + 0.05
    rho = torch.rand(b, t_len, generator=g) * 2.0
    return mask, group, tr, lp, spq, rho


@pytest.mark.parametrize("use_rho", [False, True])
@pytest.mark.parametrize("zero_tail", [True, False])
@pytest.mark.parametrize("name", ["optimal_token_baseline", "tir_optimal_token_baseline"])
def test_optimal_token_baseline_against_loop(name, zero_tail, use_rho):
    mask, group, tr, lp, spq, rho = _otb_batch()
    rho = rho if use_rho else None
    ref = (_otb_ref if name == "optimal_token_baseline" else _tir_ref)(
        tr.tolist(), mask.tolist(), group, lp.tolist(), spq.tolist(), None if rho is None else rho.tolist(), zero_tail)
    adv, ret = A.compute_advantages(name, token_rewards=tr, mask=mask, group=torch.tensor(group), old_log_probs=lp,
                                    sum_pi_squared=spq, rollout_is_weights=rho, handle_zero_tail=zero_tail)
    _close(adv, ref[0])
    _close(ret, ref[1])  # the reward-to-go (verl's returns; not masked at interior gaps)
    assert adv[6].tolist() == pytest.approx([ret[6, t].item() * mask[6, t].item() for t in range(6)])  # singleton
    assert adv[5].abs().sum().item() == 0.0  # empty row


def test_otb_by_hand_and_alignment():
    """Two responses, constant per-token weight w = 1 - 2 pi + sum pi^2 = 0.5, outcome rewards 1 and 0."""
    mask = _mask([3, 1], 3)
    lp = torch.log(torch.full((2, 3), 0.5))
    spq = torch.full((2, 3), 0.5)
    rewards = torch.tensor([1.0, 0.0])
    # W_t = 0.5 (t + 1). t = 0: both rows, G = (1, 0): B = 0.5 / (1 + 1e-8). t >= 1: only row 0 (the zero
    # tail): B = 0 with handle_zero_tail, else B = G W / (W + 1e-8) with W = 1.0, 1.5
    for zero_tail, tail in ((True, [1.0, 1.0]), (False, [1.0 - 1.0 / (1.0 + 1e-8), 1.0 - 1.5 / (1.5 + 1e-8)])):
        adv, ret = A.compute_advantages("optimal_token_baseline", rewards=rewards, mask=mask, group=None,
                                        old_log_probs=lp, sum_pi_squared=spq, handle_zero_tail=zero_tail)
        b0 = (1.0 * 0.5) / (0.5 + 0.5 + 1e-8)
        _close(adv, [[1.0 - b0, *tail], [-b0, 0.0, 0.0]], tol=1e-12)
        _close(ret, [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    # a tool gap: the TIR variant aligns the 2nd loss token of both rows, the plain one aligns positions
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    tr = torch.tensor([[0.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    lp = torch.log(torch.full((2, 3), 0.5))
    kw = {"token_rewards": tr, "mask": mask, "old_log_probs": lp, "sum_pi_squared": torch.full((2, 3), 0.5)}
    tir, _ = A.compute_advantages("tir_optimal_token_baseline", **kw)
    plain, _ = A.compute_advantages("optimal_token_baseline", **kw)
    # TIR, 2nd valid token: G = (1, 3), W = (1, 1) -> B = 2; plain, position 2: only row 0 -> B = 1
    assert tir[0, 2].item() == pytest.approx(1.0 - 4.0 / (2.0 + 1e-8))
    assert plain[0, 2].item() == pytest.approx(1.0 - 1.0 / (1.0 + 1e-8))


# ----------------------------------------------------------------------------------- DPPO / DRO


def _loss_batch(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mask = _mask([5, 3, 0, 4], 5)
    mask[0, 2] = 0.0
    old = -torch.rand(4, 5, generator=g) * 4.0
    cur = (old + torch.randn(4, 5, generator=g) * scale).clamp(max=-1e-3)
    if scale > 1:
        old[0, 0] = cur[0, 0] - 30.0  # far off-policy: log ratio 30, beyond the clamp at 20
    adv = torch.randn(4, 5, generator=g)
    adv[3] = 0.0  # a zero-advantage row
    adv[1, 1] = 0.0
    return mask, old, cur, adv


def _dppo_keep(kind, a, p, p_old, low, high):
    if kind == "tv":
        return (p - p_old) <= high if a > 0 else (p - p_old) >= -low
    kl = p_old * math.log(p_old / p) + (1 - p_old) * math.log((1 - p_old + 1e-8) / (1 - p + 1e-8))
    return (kl <= high or p <= p_old) if a > 0 else (kl <= low or p >= p_old)


@pytest.mark.parametrize("scale", [0.3, 3.0])
@pytest.mark.parametrize("kind", ["tv", "kl"])
def test_dppo_against_loop(kind, scale):
    mask, old, cur, adv = _loss_batch(scale=scale)
    low, high, c = 0.1, 0.05, 4.0
    x = cur.clone().requires_grad_(True)
    loss, metrics = A.policy_loss(f"dppo_{kind}", logp=x, old_logp=old, advantages=adv, mask=mask,
                                  clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=c)
    loss.backward()
    n = mask.sum().item()
    total, grad, masked = 0.0, torch.zeros_like(cur), 0
    for i in range(4):
        for t in range(5):
            if mask[i, t] == 0:
                continue
            lp, lo, a = cur[i, t].item(), old[i, t].item(), adv[i, t].item()
            rho = min(math.exp(max(min(lp - lo, 20.0), -20.0)), c)
            keep = _dppo_keep(kind, a, math.exp(lp), math.exp(lo), low, high)
            masked += not keep
            total += -a * rho * lp * keep
            grad[i, t] = -a * rho * keep / n
    assert loss.item() == pytest.approx(total / n, rel=1e-12, abs=1e-12)
    _close(x.grad, grad)
    assert metrics["divergence_masked_frac"] == pytest.approx(masked / n)
    assert x.grad[3].abs().sum().item() == 0.0  # zero advantage, zero gradient
    if scale > 1:  # log ratio 30: clamped to 20, so rho = e^20, truncated at c where the mask keeps the token
        a = adv[0, 0].item()
        assert x.grad[0, 0].item() in (0.0, pytest.approx(-a * c / n))
        assert metrics["clip_frac_lower"] > 0 or x.grad[0, 0].item() == 0.0


@pytest.mark.parametrize("name", ["dppo_tv", "dppo_kl"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_dppo_rows_without_advantage_can_be_skipped(name, agg):
    """What ZERO_AT_ZERO_ADVANTAGE_LOSSES promises: with the full batch's counts, dropping the rows whose
    advantages are all 0 changes neither the loss nor the other rows' gradients."""
    mask, old, cur, adv = _loss_batch(scale=0.5)
    adv[1] = 0.0
    counts = {"batch_num_tokens": mask.sum(), "batch_num_seqs": (mask.sum(-1) > 0).sum()}
    full = cur.clone().requires_grad_(True)
    loss_full, _ = A.policy_loss(name, logp=full, old_logp=old, advantages=adv, mask=mask, agg=agg, **counts)
    loss_full.backward()
    rows = [0, 2]  # rows 1 and 3 have zero advantage (row 2 is empty)
    sub = cur[rows].clone().requires_grad_(True)
    loss_sub, _ = A.policy_loss(name, logp=sub, old_logp=old[rows], advantages=adv[rows], mask=mask[rows],
                                agg=agg, **counts)
    loss_sub.backward()
    assert loss_sub.item() == pytest.approx(loss_full.item(), rel=1e-12, abs=1e-15)
    _close(sub.grad, full.grad[rows])
    assert full.grad[[1, 3]].abs().sum().item() == 0.0


def test_dppo_binary_kl_by_hand():
    """p_old = 0.5 -> p = 0.8: KL = 0.5 log(0.5/0.8) + 0.5 log(0.5/0.2) = 0.2231; TV = 0.3."""
    old = torch.log(torch.tensor([[0.5]]))
    cur = torch.log(torch.tensor([[0.8]]))
    mask = torch.ones(1, 1)
    kl = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert kl == pytest.approx(0.2231, abs=1e-4)
    for name, bound, kept in (("dppo_kl", kl + 1e-3, True), ("dppo_kl", kl - 1e-3, False),
                              ("dppo_tv", 0.3 + 1e-6, True), ("dppo_tv", 0.3 - 1e-6, False)):
        x = cur.clone().requires_grad_(True)
        loss, _ = A.policy_loss(name, logp=x, old_logp=old, advantages=torch.ones(1, 1), mask=mask,
                                clip_ratio_high=bound, clip_ratio_c=None)
        loss.backward()
        assert x.grad.item() == pytest.approx(-1.6 if kept else 0.0)  # -A * rho, rho = 0.8 / 0.5
        # a negative advantage may always move the probability down: the mask keeps the token
        y = cur.clone().requires_grad_(True)
        A.policy_loss(name, logp=y, old_logp=old, advantages=-torch.ones(1, 1), mask=mask,
                      clip_ratio_low=bound, clip_ratio_c=None)[0].backward()
        assert y.grad.item() == pytest.approx(1.6)


def test_dppo_edges_certain_token_and_untruncated_far_ratio():
    # p_old = 1 (old_logp = 0), p = 0.9: binary KL = -log 0.9 = 0.1054 (the (1 - p_old) term is 0 * log(1e-8 / ...))
    old = torch.zeros(1, 1)
    cur = torch.log(torch.tensor([[0.9]]))
    for low, kept in ((0.2, True), (0.1, False)):
        x = cur.clone().requires_grad_(True)
        A.policy_loss("dppo_kl", logp=x, old_logp=old, advantages=-torch.ones(1, 1), mask=torch.ones(1, 1),
                      clip_ratio_low=low, clip_ratio_c=None)[0].backward()
        assert x.grad.item() == pytest.approx(0.9 if kept else 0.0)  # -A * rho, rho = 0.9
    # clip_ratio_c=None: no truncation, but the log ratio is still clamped at 20 (rho = e^20, not e^30)
    old = torch.tensor([[-31.0]])
    x = torch.tensor([[-1.0]], requires_grad=True)
    A.policy_loss("dppo_tv", logp=x, old_logp=old, advantages=-torch.ones(1, 1), mask=torch.ones(1, 1),
                  clip_ratio_c=None)[0].backward()
    assert x.grad.item() == pytest.approx(math.exp(20.0))


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_dro_against_loop(agg):
    mask, old, cur, adv = _loss_batch(scale=0.7)
    beta = 0.3
    x = cur.clone().requires_grad_(True)
    loss, _ = A.policy_loss("dro", logp=x, old_logp=old, advantages=adv, mask=mask, agg=agg, dro_beta=beta)
    loss.backward()
    per = [[-(cur[i, t].item() * adv[i, t].item() - 0.5 * beta * (cur[i, t] - old[i, t]).item() ** 2)
            for t in range(5)] for i in range(4)]
    dper = [[-(adv[i, t].item() - beta * (cur[i, t] - old[i, t]).item()) for t in range(5)] for i in range(4)]
    rows = [i for i in range(4) if mask[i].sum() > 0]
    if agg == "token-mean":
        n = mask.sum().item()
        expected = sum(per[i][t] * mask[i, t].item() for i in range(4) for t in range(5)) / n
        grad = [[dper[i][t] * mask[i, t].item() / n for t in range(5)] for i in range(4)]
    else:
        expected = sum(sum(per[i][t] * mask[i, t].item() for t in range(5)) / mask[i].sum().item()
                       for i in rows) / len(rows)
        grad = [[dper[i][t] * mask[i, t].item() / (mask[i].sum().item() * len(rows)) if i in rows else 0.0
                 for t in range(5)] for i in range(4)]
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    _close(x.grad, grad)
    assert x.grad[3].abs().sum().item() > 0  # the penalty acts on a zero-advantage row
    for bad in (None, 0.0, -1.0):
        with pytest.raises(ValueError, match="dro_beta"):
            A.policy_loss("dro", logp=cur, old_logp=old, advantages=adv, mask=mask, dro_beta=bad)


# ------------------------------------------------------------------------------ rejection options


def _rs_ref(option, old, roll, mask, threshold):
    b, t_len = len(mask), len(mask[0])
    out = [[0.0] * t_len for _ in range(b)]
    for i in range(b):
        stats = []
        for t in range(t_len):
            lr = max(min(old[i][t] - roll[i][t], 20.0), -20.0)
            stats.append(0.5 * lr * lr if option.endswith("k2") else math.exp(lr) - 1.0 - lr)
        valid = [stats[t] for t in range(t_len) if mask[i][t] != 0]
        if option.startswith("token_"):
            keep = [s <= threshold for s in stats]
        else:
            agg = option.split("_")[1]
            seq = (sum(valid) if agg == "sum" else (sum(valid) / len(valid) if agg == "mean" else max(valid))) \
                if valid else 0.0
            keep = [seq <= threshold] * t_len
        for t in range(t_len):
            out[i][t] = float(keep[t]) * mask[i][t]
    return out


def _mismatch_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = _mask([5, 4, 0, 5, 2], 5)
    mask[3, 1] = 0.0
    roll = -torch.rand(5, 5, generator=g) * 3
    old = roll + torch.randn(5, 5, generator=g) * 0.4
    old[0, 3] = roll[0, 3] + 50.0  # far off-policy: clamped to +20
    old[3, 0] = roll[3, 0] - 50.0  # clamped to -20 (k3 = e^-20 - 1 + 20)
    old[3, 1] = roll[3, 1] + 80.0  # at a masked position: must not count
    return mask, old, roll


@pytest.mark.parametrize("option", A.ROLLOUT_RS_OPTIONS)
@pytest.mark.parametrize("threshold", [0.02, 0.3, 25.0])
def test_rejection_options_against_loop(option, threshold):
    mask, old, roll = _mismatch_batch()
    keep = A.mismatch_weights(option, old, roll, mask, rollout_rs_threshold=threshold)
    _close(keep, _rs_ref(option, old.tolist(), roll.tolist(), mask.tolist(), threshold))
    assert set(keep.unique().tolist()) <= {0.0, 1.0} and keep.dtype == old.dtype
    assert option in A.BOUNDED_MISMATCH_CORRECTIONS and A.off_policy_safe("gpg", option)


def test_rejection_options_by_hand():
    """Row 0: log ratios (0.6, 0.2) on 2 of 5 positions -> k2 = (0.18, 0.02): sum 0.2, mean 0.1, max 0.18;
    k3 = (e^0.6 - 1.6, e^0.2 - 1.2) = (0.2221, 0.0214): sum 0.2435, mean 0.1218, max 0.2221.
    Row 1: a single token with log ratio -0.1 -> k2 = 0.005, k3 = e^-0.1 - 0.9 = 0.00484."""
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]])
    lr = torch.tensor([[0.6, 9.0, 0.2, 9.0, 9.0], [9.0, 9.0, 9.0, -0.1, 9.0]])  # 9.0: masked, must not count
    roll = torch.full((2, 5), -2.0)
    cases = {("seq_mean_k2", 0.09): [0, 1], ("seq_mean_k2", 0.11): [1, 1], ("seq_sum_k2", 0.19): [0, 1],
             ("seq_sum_k2", 0.21): [1, 1], ("seq_max_k2", 0.17): [0, 1], ("seq_max_k2", 0.19): [1, 1],
             ("seq_mean_k3", 0.12): [0, 1], ("seq_mean_k3", 0.125): [1, 1], ("seq_sum_k3", 0.24): [0, 1],
             ("seq_sum_k3", 0.25): [1, 1], ("seq_max_k3", 0.22): [0, 1], ("seq_max_k3", 0.0048): [0, 0],
             ("seq_max_k3", 0.0049): [0, 1]}
    for (option, threshold), rows in cases.items():
        keep = A.mismatch_weights(option, roll + lr, roll, mask, rollout_rs_threshold=threshold)
        _close(keep, mask * torch.tensor(rows, dtype=mask.dtype).unsqueeze(-1))
    keep = A.mismatch_weights("token_k2", roll + lr, roll, mask, rollout_rs_threshold=0.1)
    _close(keep, [[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]])
    keep = A.mismatch_weights("token_k3", roll + lr, roll, mask, rollout_rs_threshold=0.03)
    _close(keep, [[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]])


def test_rejection_options_far_off_policy_and_bad_thresholds():
    mask, old, roll = _mismatch_batch()
    k3 = A.mismatch_weights("token_k3", old, roll, mask, rollout_rs_threshold=19.5)
    assert k3[0, 3].item() == 0.0  # k3 = e^20 - 21
    assert k3[3, 0].item() == 1.0  # k3 = e^-20 + 19 < 19.5
    assert A.mismatch_weights("token_k2", old, roll, mask, rollout_rs_threshold=199.0)[0, 3].item() == 0.0
    assert A.mismatch_weights("token_k2", old, roll, mask, rollout_rs_threshold=200.0)[0, 3].item() == 1.0
    for bad in (0.0, -1.0, None, "x"):
        with pytest.raises((ValueError, TypeError)):
            A.mismatch_weights("seq_max_k2", old, roll, mask, rollout_rs_threshold=bad)


# ------------------------------------------------------------------ tis / mis batch normalisation


def _is_ref(old, roll, mask, level, upper, lower):
    """(weights before normalisation, batch mean) by explicit loops, level token or sequence."""
    b, t_len = len(mask), len(mask[0])
    w = [[0.0] * t_len for _ in range(b)]
    for i in range(b):
        seq_lr = sum((old[i][t] - roll[i][t]) * mask[i][t] for t in range(t_len))
        for t in range(t_len):
            lr = old[i][t] - roll[i][t] if level == "token" else seq_lr
            r = math.exp(max(min(lr, 20.0), -20.0))
            if lower is None:
                r = min(r, upper)
            elif not lower <= r <= upper:
                r = 0.0
            w[i][t] = r * mask[i][t]
    if level == "token":
        vals = [w[i][t] for i in range(b) for t in range(t_len) if mask[i][t] != 0]
        mean = sum(vals) / len(vals)
    else:
        rows = [i for i in range(b) if sum(mask[i]) > 0]
        mean = sum(sum(w[i]) / sum(mask[i]) for i in rows) / len(rows)
    return w, mean


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("name", ["tis", "mis"])
def test_tis_mis_batch_normalize(name, level):
    mask, old, roll = _mismatch_batch()
    kw = {"level": level, "upper": 2.0} if name == "tis" else {"level": level, "upper": 2.0, "lower": 0.5}
    w_ref, mean = _is_ref(old.tolist(), roll.tolist(), mask.tolist(), level, 2.0, kw.get("lower"))
    plain = A.mismatch_weights(name, old, roll, mask, **kw)
    _close(plain, w_ref)  # the default is unchanged: no normalisation
    normed = A.mismatch_weights(name, old, roll, mask, batch_normalize=True, **kw)
    _close(normed, [[x / mean for x in row] for row in w_ref])
    if level == "token":
        assert (normed * mask).sum().item() / mask.sum().item() == pytest.approx(1.0)
    else:
        per_seq = [(normed[i] * mask[i]).sum().item() / mask[i].sum().item() for i in range(5) if mask[i].sum() > 0]
        assert statistics.fmean(per_seq) == pytest.approx(1.0)
    # all weights zero (every token dropped): the mean is not above 1e-8, the weights stay as they are
    zero = A.mismatch_weights("mis", old, roll + 30.0, mask, level=level, upper=2.0, batch_normalize=True)
    assert zero.abs().sum().item() == 0.0


# -------------------------------------------------------------------------------------- bypass mode


def _bypass_ref(kind, cur, roll, adv, mask, rollout_is, threshold, batch_norm, rs, rs_threshold,
                low=0.2, high=0.28, c=3.0):
    """(loss, dloss/dlogp) for token-mean by explicit loops."""
    b, t_len = len(mask), len(mask[0])
    old = cur  # log_ratio = log pi_current - log pi_rollout, as `mismatch` expects (old_logp first)
    keep = [[1.0] * t_len for _ in range(b)]
    for option, thr in rs:
        k = _rs_ref(option, old, roll, mask, thr)
        keep = [[keep[i][t] * k[i][t] for t in range(t_len)] for i in range(b)]
    eff = [[mask[i][t] * keep[i][t] for t in range(t_len)] for i in range(b)]
    w = None
    if rollout_is is not None:
        upper, lower = (threshold, None) if not isinstance(threshold, str) else \
            tuple(reversed([float(x) for x in threshold.split("_")]))
        w, mean = _is_ref(old, roll, mask, rollout_is, upper, lower)
        if batch_norm and mean > 1e-8:
            w = [[x / mean for x in row] for row in w]
    n = sum(map(sum, eff))
    total, grad = 0.0, [[0.0] * t_len for _ in range(b)]
    for i in range(b):
        for t in range(t_len):
            if eff[i][t] == 0:
                continue
            a, lp = adv[i][t], cur[i][t]
            if kind == "reinforce":
                wt = 1.0 if w is None else w[i][t]
                total += -a * lp * wt
                grad[i][t] = -a * wt / n
            else:
                rho = math.exp(max(min(lp - roll[i][t], 20.0), -20.0))
                l1, l2 = -a * rho, -a * min(max(rho, 1 - low), 1 + high)
                val, d = (l1, -a * rho) if l1 >= l2 else (l2, 0.0)
                if a < 0 and val > -a * c:
                    val, d = -a * c, 0.0
                total += val
                grad[i][t] = d / n
    return total / n, grad


@pytest.mark.parametrize("kind", ["ppo_clip", "reinforce"])
@pytest.mark.parametrize("setting", [
    (None, 2.0, False, None, None),
    ("token", 2.0, True, "token_k3", 0.5),
    ("sequence", "0.5_3.0", True, "seq_mean_k2,seq_max_k3", "0.3,2.0"),
    ("token", "0.2_5.0", False, "seq_sum_k2,token_k2", 1.0),
])
def test_bypass_mode_against_loop(kind, setting):
    rollout_is, threshold, batch_norm, rs, rs_threshold = setting
    mask, cur, roll = _mismatch_batch(seed=3)
    cur = cur.clamp(max=-1e-3)
    adv = torch.randn(5, 5, generator=torch.Generator().manual_seed(4))
    x = cur.clone().requires_grad_(True)
    loss, metrics = A.policy_loss("bypass_mode", logp=x, old_logp=roll, advantages=adv, mask=mask, loss_type=kind,
                                  rollout_is=rollout_is, rollout_is_threshold=threshold,
                                  rollout_is_batch_normalize=batch_norm, rollout_rs=rs,
                                  rollout_rs_threshold=rs_threshold, clip_ratio_high=0.28)
    loss.backward()
    pairs = []
    if rs is not None:
        specs = str(rs_threshold).split(",")
        specs = specs * len(rs.split(",")) if len(specs) == 1 else specs
        pairs = [(o, float(s)) for o, s in zip(rs.split(","), specs)]
    ref_loss, ref_grad = _bypass_ref(kind, cur.tolist(), roll.tolist(), adv.tolist(), mask.tolist(), rollout_is,
                                     threshold, batch_norm, pairs, rs_threshold)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    _close(x.grad, ref_grad)
    if rs is not None:
        assert 0.0 <= metrics["rollout_rs_masked_fraction"] <= 1.0


def test_bypass_mode_ppo_clip_ignores_is_weights_and_empty_batch():
    mask, cur, roll = _mismatch_batch(seed=5)
    adv = torch.randn(5, 5, generator=torch.Generator().manual_seed(6))
    kw = {"logp": cur, "old_logp": roll, "advantages": adv, "mask": mask}
    plain, _ = A.policy_loss("bypass_mode", **kw)
    with_is, _ = A.policy_loss("bypass_mode", **kw, rollout_is="token", rollout_is_threshold=1.1)
    vanilla, _ = A.policy_loss("vanilla", **kw)  # the PPO clip against the rollout policy, verl's defaults
    assert plain.item() == with_is.item() == pytest.approx(vanilla.item(), rel=1e-12)
    reinforce, _ = A.policy_loss("bypass_mode", **kw, loss_type="reinforce", rollout_is="token",
                                 rollout_is_threshold=1.1)
    assert reinforce.item() != pytest.approx(plain.item())
    empty, _ = A.policy_loss("bypass_mode", logp=cur, old_logp=roll, advantages=adv, mask=torch.zeros(5, 5),
                             rollout_is="token", rollout_rs="token_k2", rollout_rs_threshold=0.1)
    assert empty.item() == 0.0
    with pytest.raises(ValueError, match="loss_type"):
        A.policy_loss("bypass_mode", **kw, loss_type="grpo")
    with pytest.raises(ValueError, match="rejection option"):
        A.policy_loss("bypass_mode", **kw, rollout_rs="token_k1", rollout_rs_threshold=1.0)


# ---------------------------------------------------------------------- registries and the config


def test_every_name_is_registered_with_the_right_flags():
    for name in ("grpo_passk", "gdpo_verl", "optimal_token_baseline", "tir_optimal_token_baseline"):
        assert name in A.ADVANTAGE_ESTIMATORS
    assert A.ADVANTAGE_ESTIMATORS["gdpo"] is A.ADVANTAGE_ESTIMATORS["gdpo_verl"]  # verl's name (spec); the combiner `gdpo` stays TRL's
    for name in ("dppo_tv", "dppo_kl", "dro", "bypass_mode"):
        assert name in A.POLICY_LOSSES
    assert {"dppo_tv", "dppo_kl", "dro"} <= A.TRUST_REGION_LOSSES and "bypass_mode" not in A.TRUST_REGION_LOSSES
    assert {"dppo_tv", "dppo_kl"} <= A.ZERO_AT_ZERO_ADVANTAGE_LOSSES
    assert not {"dro", "bypass_mode"} & A.ZERO_AT_ZERO_ADVANTAGE_LOSSES
    assert set(A.ROLLOUT_RS_OPTIONS) == {"token_k2", "token_k3", "seq_sum_k2", "seq_sum_k3", "seq_mean_k2",
                                         "seq_mean_k3", "seq_max_k2", "seq_max_k3"}
    assert A.mismatch_params("token_k3", {"rollout_rs_threshold": 0.1, "upper": 2.0}) == {"rollout_rs_threshold": 0.1}


@pytest.mark.parametrize("overrides", [
    ["algorithm.policy_loss=dppo_tv", "algorithm.policy_loss_params={clip_ratio_low: 0.15, clip_ratio_c: 10000.0}"],
    ["algorithm.policy_loss=dppo_kl", "algorithm.policy_loss_params={clip_ratio_high: 0.05}"],
    ["algorithm.policy_loss=dro", "algorithm.policy_loss_params={dro_beta: 0.1}"],
    ["algorithm.policy_loss=bypass_mode", "algorithm.mismatch.method=none",
     ("algorithm.policy_loss_params={loss_type: reinforce, rollout_is: token, rollout_is_threshold: 2.0, "
      "rollout_is_batch_normalize: true, rollout_rs: 'token_k3,seq_max_k2', rollout_rs_threshold: '0.1,0.5'}")],
    ["algorithm.advantage_estimator=grpo_passk", "algorithm.advantage_params={norm_adv_by_std_in_grpo: false}"],
    ["algorithm.advantage_estimator=gdpo_verl", ("algorithm.advantage_params={epsilon: 1.0e-6, "
                                                 "gdpo_reward_keys: [correct, format], "
                                                 "gdpo_reward_weights: [1.0, 0.5]}")],
    ["algorithm.advantage_estimator=optimal_token_baseline", "algorithm.advantage_params={handle_zero_tail: false}"],
    ["algorithm.advantage_estimator=tir_optimal_token_baseline", "algorithm.advantage_params={epsilon: 1.0e-8}"],
    ["algorithm.mismatch.method=token_k3", "algorithm.mismatch.rollout_rs_threshold=0.5"],
])
def test_config_validates_the_new_names(overrides):
    load_config("configs/grpo_arithmetic_tiny.yaml", overrides)


def test_a_rejection_option_without_its_threshold_is_a_config_error():
    with pytest.raises(ConfigError, match="needs algorithm.mismatch.rollout_rs_threshold"):
        load_config("configs/grpo_arithmetic_tiny.yaml", ["algorithm.mismatch.method=token_k3"])


@pytest.mark.parametrize("override,needle", [
    ("algorithm.policy_loss_params={clip_ratio: 0.2}", "is not a parameter of 'dppo_tv'"),
    ("algorithm.policy_loss_params={clip_ratio_c: fast}", "expected a number"),
])
def test_config_rejects_unknown_or_mistyped_params(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("configs/grpo_arithmetic_tiny.yaml", ["algorithm.policy_loss=dppo_tv", override])
