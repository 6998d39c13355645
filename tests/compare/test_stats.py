"""rlvr.compare.stats against closed forms and the printed t table (no SciPy needed)."""

import math

import pytest

from rlvr.compare import stats as S

# Two-sided 95% (q = 0.975) and one-sided 95% quantiles of Student's t, from the standard table.
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281, 29: 2.0452, 120: 1.9799}
T95 = {1: 6.3138, 2: 2.9200, 4: 2.1318, 10: 1.8125}


@pytest.mark.parametrize("df,expected", sorted(T975.items()))
def test_t_quantile_975_matches_the_table(df, expected):
    assert S.t_ppf(0.975, df) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("df,expected", sorted(T95.items()))
def test_t_quantile_95_matches_the_table(df, expected):
    assert S.t_ppf(0.95, df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_limits_and_symmetry():
    assert S.t_ppf(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)
    assert S.t_ppf(0.975, 1e6) == pytest.approx(1.959964, abs=1e-4)
    assert S.t_ppf(0.5, 3) == 0.0
    assert S.t_ppf(0.025, 4) == pytest.approx(-S.t_ppf(0.975, 4))
    # fractional df (Welch) lies between its integer neighbours
    assert S.t_ppf(0.975, 3) < S.t_ppf(0.975, 2.5) < S.t_ppf(0.975, 2)


@pytest.mark.parametrize("t", [-7.0, -1.3, -0.2, 0.0, 0.4, 1.0, 3.3, 25.0])
def test_t_cdf_closed_forms(t):
    # df = 1 is the Cauchy distribution; df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    assert S.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert S.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_t_interval_by_hand():
    xs = [1.0, 2.0, 3.0, 4.0]
    iv = S.t_interval(xs)
    s = math.sqrt(5 / 3)  # sample std of 1..4
    hw = 3.182446305284263 * s / 2
    assert iv.estimate == 2.5 and iv.n == 4 and iv.df == 3
    assert iv.low == pytest.approx(2.5 - hw, abs=1e-9) and iv.high == pytest.approx(2.5 + hw, abs=1e-9)
    assert S.std(xs) == pytest.approx(s)


def test_t_interval_with_one_seed_is_undefined():
    iv = S.t_interval([0.3])
    assert iv.estimate == 0.3 and not iv.defined and iv.n == 1
    assert "too few seeds" in S.verdict(S.welch_interval([0.3], [0.2]))


def test_welch_interval_by_hand():
    xs, ys = [0.50, 0.62, 0.55, 0.71], [0.40, 0.45, 0.43]
    mx, my = sum(xs) / 4, sum(ys) / 3
    vx = sum((x - mx) ** 2 for x in xs) / 3 / 4
    vy = sum((y - my) ** 2 for y in ys) / 2 / 3
    df = (vx + vy) ** 2 / (vx ** 2 / 3 + vy ** 2 / 2)
    iv = S.welch_interval(xs, ys)
    assert iv.estimate == pytest.approx(mx - my)
    assert iv.df == pytest.approx(df)
    hw = S.t_ppf(0.975, df) * math.sqrt(vx + vy)
    assert iv.low == pytest.approx(mx - my - hw) and iv.high == pytest.approx(mx - my + hw)


def test_welch_with_equal_variances_and_sizes_has_df_2n_minus_2():
    xs, ys = [0.5, 0.6, 0.7], [0.4, 0.5, 0.6]
    iv = S.welch_interval(xs, ys)
    assert iv.df == pytest.approx(4.0)
    hw = 2.7764451051977987 * math.sqrt(2 * 0.01 / 3)
    assert iv.estimate == pytest.approx(0.1) and iv.half_width == pytest.approx(hw)


def test_welch_with_zero_variance_collapses_to_the_difference():
    iv = S.welch_interval([1.0, 1.0], [0.5, 0.5])
    assert (iv.low, iv.high) == (0.5, 0.5)
    assert S.verdict(iv).startswith("better")


def test_verdict_wording():
    assert S.verdict(S.welch_interval([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])).startswith(
        "no evidence of a difference")
    up = S.welch_interval([0.90, 0.91, 0.92], [0.40, 0.41, 0.42])
    assert S.verdict(up).startswith("better than baseline")
    assert S.verdict(up, higher_is_better=False).startswith("worse than baseline")
    assert "+50 pts" in S.verdict(up, scale=100, unit=" pts")
    down = S.welch_interval([0.1, 0.11, 0.12], [0.40, 0.41, 0.42])
    assert S.verdict(down).startswith("worse than baseline")


def test_auc_is_the_average_height_of_the_curve():
    steps = [1, 2, 3, 4, 5, 6]
    assert S.auc(steps, [0.3] * 6) == pytest.approx(0.3)
    a, b = 0.1, 0.05  # linear r = a + b s: average over [1, 6] is a + b * 3.5
    assert S.auc(steps, [a + b * s for s in steps]) == pytest.approx(a + b * 3.5)
    assert S.auc([4, 1, 2], [1.0, 0.0, 0.0]) == pytest.approx((0.5 * 2 * 1.0) / 3)  # sorted by step
    assert S.auc([7], [0.4]) == 0.4 and math.isnan(S.auc([], []))


def test_final_mean_uses_the_last_tenth():
    assert S.final_mean(list(range(20))) == pytest.approx(18.5)  # last 2 of 20
    assert S.final_mean([1.0, 2.0, 3.0]) == 3.0  # at least one
    assert math.isnan(S.final_mean([]))


def test_curve_band():
    a = [(1, 0.0), (2, 1.0), (3, 2.0)]
    b = [(1, 2.0), (2, 3.0)]
    band = S.curve_band([a, b])
    assert band.steps == [1, 2, 3] and band.n == [2, 2, 1]
    assert band.mean == [1.0, 2.0, 2.0]
    sd = math.sqrt(2.0)
    assert band.low[0] == pytest.approx(1 - sd) and band.high[0] == pytest.approx(1 + sd)
    assert band.low[2] == band.high[2] == 2.0  # one seed: no spread
    mm = S.curve_band([a, b], "minmax")
    assert (mm.low[0], mm.high[0]) == (0.0, 2.0)
    with pytest.raises(ValueError):
        S.curve_band([a], "iqr")


def test_moving_average():
    assert S.moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert S.moving_average([1.0, 2.0, 3.0], 1) == [1.0, 2.0, 3.0]
    assert S.moving_average([3.0, 6.0], 5) == [3.0, 4.5]
    with pytest.raises(ValueError):
        S.moving_average([1.0], 0)


def test_paired_interval_uses_per_seed_differences():
    base = {0: 0.40, 1: 0.55, 2: 0.70, 3: 0.9}
    arm = {0: 0.43, 1: 0.57, 2: 0.74}  # seed 3 missing: only shared seeds are paired
    iv = S.paired_interval(arm, base)
    d = [0.03, 0.02, 0.04]
    assert iv.n == 3 and iv.df == 2
    assert iv.estimate == pytest.approx(0.03)
    assert iv.half_width == pytest.approx(4.302652729749752 * S.std(d) / math.sqrt(3))
    assert S.verdict(iv).startswith("better")  # shared seed-to-seed variation cancels ...
    assert S.verdict(S.welch_interval(list(arm.values()), [0.40, 0.55, 0.70])).startswith("no evidence")  # ... not here
