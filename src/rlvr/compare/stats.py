"""Statistics for comparing arms over seeds: pure functions on lists of floats, no I/O.

Seeds are few (3-5), so intervals use Student's t; the difference between two arms uses Welch's
interval (unequal variances, Welch-Satterthwaite degrees of freedom) or, for seed-paired runs,
the t interval of the per-seed differences. The t quantile is computed
here (regularised incomplete beta by continued fraction, then bisection), so there is no SciPy
dependency; ``tests/compare/test_stats.py`` checks it against the printed t table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from rlvr.records.plots import moving_average  # re-exported: the curve smoothing every plot uses

__all__ = ["mean", "std", "t_cdf", "t_ppf", "Interval", "t_interval", "welch_interval", "paired_interval", "verdict",
           "auc", "final_mean", "moving_average", "CurveBand", "curve_band"]


def mean(xs: Sequence[float]) -> float:
    if not xs:
        return math.nan
    return math.fsum(xs) / len(xs)


def std(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1 in the denominator); nan for fewer than 2 values."""
    n = len(xs)
    if n < 2:
        return math.nan
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1))


# --------------------------------------------------------------------------- Student's t

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (> 0, may be fractional or inf) degrees of freedom."""
    if df <= 0 or math.isnan(df):
        raise ValueError(f"t distribution needs df > 0, got {df}")
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (``t_ppf(0.975, 2) = 4.303``)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- intervals

@dataclass(frozen=True)
class Interval:
    """``estimate`` with a two-sided ``level`` interval [low, high]; ``df`` its t degrees of freedom.

    With fewer than two values per group the interval is undefined (low = high = nan)."""

    estimate: float
    low: float
    high: float
    n: int
    df: float
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    @property
    def defined(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def contains(self, value: float = 0.0) -> bool:
        return self.low <= value <= self.high


def t_interval(xs: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of ``xs`` with the t interval mean +- t_{(1+level)/2, n-1} * s / sqrt(n)."""
    xs = [float(x) for x in xs]
    n, m = len(xs), mean(xs)
    if n < 2:
        return Interval(m, math.nan, math.nan, n, math.nan, level)
    s = std(xs)
    hw = t_ppf((1 + level) / 2, n - 1) * s / math.sqrt(n)
    return Interval(m, m - hw, m + hw, n, float(n - 1), level)


def welch_interval(xs: Sequence[float], ys: Sequence[float], level: float = 0.95) -> Interval:
    """Interval for mean(xs) - mean(ys) without assuming equal variances (Welch 1947).

    se^2 = s_x^2/n_x + s_y^2/n_y and df = se^4 / ((s_x^2/n_x)^2/(n_x-1) + (s_y^2/n_y)^2/(n_y-1)).
    When both samples have zero variance the interval collapses to the observed difference."""
    xs, ys = [float(x) for x in xs], [float(y) for y in ys]
    nx, ny = len(xs), len(ys)
    diff = mean(xs) - mean(ys)
    n = min(nx, ny)
    if nx < 2 or ny < 2:
        return Interval(diff, math.nan, math.nan, n, math.nan, level)
    vx, vy = std(xs) ** 2 / nx, std(ys) ** 2 / ny
    se2 = vx + vy
    if se2 == 0.0:
        return Interval(diff, diff, diff, n, math.inf, level)
    df = se2 ** 2 / (vx ** 2 / (nx - 1) + vy ** 2 / (ny - 1))
    hw = t_ppf((1 + level) / 2, df) * math.sqrt(se2)
    return Interval(diff, diff - hw, diff + hw, n, df, level)


def paired_interval(xs: dict, ys: dict, level: float = 0.95) -> Interval:
    """Interval for the mean of paired differences xs[k] - ys[k] over the keys (seeds) both have.

    Arms run with the same seed see the same prompts in the same order, so their results are
    correlated; pairing removes that shared part of the variance (at the cost of n - 1 dof)."""
    keys = sorted(set(xs) & set(ys))
    return t_interval([float(xs[k]) - float(ys[k]) for k in keys], level)


def verdict(diff: Interval, higher_is_better: bool = True, scale: float = 1.0, unit: str = "") -> str:
    """A short sentence on an arm-minus-baseline interval.

    The interval overlapping zero reads "no evidence of a difference" (never "no difference")."""
    def f(v: float) -> str:
        return f"{v * scale:+.3g}{unit}"

    if not diff.defined:
        return f"{f(diff.estimate)}; too few seeds for an interval (need >= 2 per arm)"
    ci = f"{round(100 * diff.level)}% CI [{f(diff.low)}, {f(diff.high)}]"
    if diff.contains(0.0):
        return f"no evidence of a difference ({f(diff.estimate)}, {ci})"
    better = (diff.estimate > 0) == higher_is_better
    return f"{'better' if better else 'worse'} than baseline ({f(diff.estimate)}, {ci})"


# --------------------------------------------------------------------------- curves

def auc(steps: Sequence[float], values: Sequence[float]) -> float:
    """Area under the curve by the trapezoid rule, divided by the step span (so it is the
    curve's average height: a constant curve c gives c). One point gives its value."""
    pts = sorted(zip((float(s) for s in steps), (float(v) for v in values)))
    if not pts:
        return math.nan
    if len(pts) == 1:
        return pts[0][1]
    area = math.fsum((x1 - x0) * (y0 + y1) / 2.0 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))
    span = pts[-1][0] - pts[0][0]
    return area / span if span > 0 else mean([y for _, y in pts])


def final_mean(values: Sequence[float], frac: float = 0.1) -> float:
    """Mean of the last ``ceil(frac * n)`` values (at least one): a less noisy "final" value."""
    if not values:
        return math.nan
    k = max(1, math.ceil(frac * len(values)))
    return mean(list(values)[-k:])


@dataclass(frozen=True)
class CurveBand:
    steps: list[float]
    mean: list[float]
    low: list[float]
    high: list[float]
    n: list[int]


def curve_band(curves: Sequence[Sequence[tuple[float, float]]], band: str = "std") -> CurveBand:
    """Per-step mean over seeds with a band: ``"std"`` (mean +- sample std) or ``"minmax"``.

    ``curves`` holds one list of (step, value) per seed; a step missing in some seeds is averaged
    over the seeds that have it (``n`` says how many)."""
    if band not in ("std", "minmax"):
        raise ValueError(f"band must be 'std' or 'minmax', got {band!r}")
    by_step: dict[float, list[float]] = {}
    for curve in curves:
        for s, v in curve:
            by_step.setdefault(float(s), []).append(float(v))
    steps = sorted(by_step)
    out = CurveBand([], [], [], [], [])
    for s in steps:
        vs = by_step[s]
        m = mean(vs)
        if band == "minmax":
            lo, hi = min(vs), max(vs)
        else:
            sd = std(vs) if len(vs) > 1 else 0.0
            lo, hi = m - sd, m + sd
        out.steps.append(s)
        out.mean.append(m)
        out.low.append(lo)
        out.high.append(hi)
        out.n.append(len(vs))
    return out
