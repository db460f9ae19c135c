"""Statistics for comparing evaluations: intervals over seeds and paired tests on episodes.

Used by the learning benchmark (``bench/learning.py``) and by ``make demo``'s verdict
(``sernf.demo``), so both report the same test. Pure functions on plain numbers (numpy + scipy,
nothing of the learner), tested with answers worked out by hand (``test_paired_statistics.py``).

The unit of replication is the seed: one seed is one independent training run (network
initialisation, sampling noise, online episodes). Every run is evaluated on the same fixed-seed
evaluation episodes, so two methods can also be compared episode by episode:

* :func:`mean_interval`: a method's mean success over seeds with a two-sided Student-t interval
  (n - 1 degrees of freedom on the per-seed success rates). It describes the spread between
  training runs, which is what a user re-running the method meets; the evaluation noise of each
  run is inside that spread.
* :func:`mcnemar_exact`: McNemar's exact test on the (seed, episode) pairs of two methods,
  pooled over seeds: under H0 "both methods succeed on the same episodes equally often", each
  discordant pair (one succeeded, the other failed) is a fair coin, so the count of pairs won by
  A is Binomial(discordant, 1/2). It treats episodes as the sample and so ignores the run-to-run
  spread; it answers "are these trained policies different on these episodes?". Two-sided by
  default; ``alternative="greater"`` asks only "does A succeed more often than B?".
* :func:`one_sided_paired_test`: one run against another on the same episodes (the demo's
  verdict): the one-sided McNemar test with the paired difference's normal 95 % interval.
* :func:`paired_bootstrap`: the mean over seeds of the per-seed success difference A - B, with a
  percentile bootstrap interval that resamples seeds (whole runs) with replacement: the
  between-run spread again, which the pooled McNemar test leaves out. With few seeds (5) the
  percentile interval is too narrow rather than too wide; read it with the per-seed differences.
* :func:`paired_difference_se`: one seed's difference and its standard error from the paired
  episodes (to ask "is this run worse than its own IL policy by more than 2 SE?").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A mean with a two-sided confidence interval (``low``/``high`` None when undefined)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    """Number of values (seeds) the mean is over."""
    method: str
    """How the interval was computed, in words."""

    def to_dict(self) -> dict:
        return asdict(self)


def _confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with a Student-t interval (``t_{(1+c)/2, n-1} * s / sqrt(n)``).

    With one value the interval is undefined (None); with identical values it is the point.
    """
    confidence = _confidence(confidence)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"mean_interval needs a non-empty 1-D list of finite numbers, got {values!r}")
    mean = float(x.mean())
    method = f"Student t over {x.size} seeds ({x.size - 1} dof)"
    if x.size < 2:
        return Interval(mean, None, None, int(x.size), method)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, int(x.size), method)


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired binary outcomes."""

    pairs: int
    """Paired outcomes compared."""
    a_only: int
    """Pairs where A succeeded and B failed."""
    b_only: int
    """Pairs where B succeeded and A failed."""
    p_value: float
    """Exact p. Two-sided: ``min(1, 2 * P[Binomial(a_only + b_only, 1/2) <= min(a_only, b_only)])``;
    one-sided (``alternative="greater"``): ``P[Binomial(a_only + b_only, 1/2) >= a_only]``."""

    def to_dict(self) -> dict:
        return asdict(self)


def _binary(values: Sequence, name: str) -> np.ndarray:
    x = np.asarray(values)
    if x.ndim != 1 or not np.all((x == 0) | (x == 1)):
        raise ValueError(f"{name} must be a 1-D list of 0/1 (or bool) outcomes")
    return x.astype(bool)


def mcnemar_exact(a: Sequence, b: Sequence, alternative: str = "two-sided") -> McNemar:
    """McNemar's exact (binomial) test of paired outcomes ``a[i]`` vs ``b[i]``.

    Concordant pairs carry no information about which method is better; only the discordant
    ones count. No discordant pairs: p = 1. ``alternative``: ``"two-sided"`` (A and B differ)
    or ``"greater"`` (A succeeds more often than B).
    """
    if alternative not in ("two-sided", "greater"):
        raise ValueError(f'alternative must be "two-sided" or "greater", got {alternative!r}')
    x, y = _binary(a, "a"), _binary(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired outcomes need equal lengths, got {x.size} and {y.size}")
    a_only = int(np.sum(x & ~y))
    b_only = int(np.sum(~x & y))
    discordant = a_only + b_only
    if discordant == 0:
        p = 1.0
    elif alternative == "greater":
        p = float(stats.binom.sf(a_only - 1, discordant, 0.5))
    else:
        p = min(1.0, 2.0 * float(stats.binom.cdf(min(a_only, b_only), discordant, 0.5)))
    return McNemar(int(x.size), a_only, b_only, p)


def paired_bootstrap(
    differences: Sequence[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> Interval:
    """Mean of per-seed differences with a percentile bootstrap interval over seeds.

    Each resample draws ``len(differences)`` seeds with replacement and takes the mean of their
    differences; the interval is the ``(1 -+ c) / 2`` quantiles of those means. Fixed ``seed``:
    the same report every time. One seed: no interval.
    """
    confidence = _confidence(confidence)
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError(f"paired_bootstrap needs a non-empty 1-D list of finite numbers, got {differences!r}")
    if int(resamples) != resamples or resamples < 100:
        raise ValueError(f"resamples must be an int >= 100, got {resamples!r}")
    mean = float(d.mean())
    method = f"percentile bootstrap over {d.size} seeds ({int(resamples)} resamples)"
    if d.size < 2:
        return Interval(mean, None, None, int(d.size), method)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(int(resamples), d.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    # The resampled means of a constant are that constant up to float rounding; report the point.
    low, high = min(float(low), mean), max(float(high), mean)
    return Interval(mean, low, high, int(d.size), method)


def paired_difference_se(a: Sequence, b: Sequence) -> tuple[float, float]:
    """Success difference ``mean(a) - mean(b)`` over paired episodes, and its standard error
    ``std(a - b, ddof=1) / sqrt(n)`` (0 when fewer than 2 episodes)."""
    x, y = _binary(a, "a").astype(np.float64), _binary(b, "b").astype(np.float64)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired outcomes need equal, non-zero lengths, got {x.size} and {y.size}")
    d = x - y
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
    return float(d.mean()), se


def compare_paired(
    a: Mapping[int, Sequence], b: Mapping[int, Sequence], confidence: float = 0.95, bootstrap_seed: int = 0
) -> dict:
    """A vs B on the seeds both have, each seed's episodes paired by index.

    ``a`` / ``b``: seed -> per-episode outcomes (0/1) of that seed's run. Returns plain JSON:
    the seeds used, per-seed difference and SE, the mean difference over seeds with its paired
    bootstrap interval, and McNemar's exact test pooled over all (seed, episode) pairs.
    Raises ValueError when no seed is common or a seed's episode lists differ in length (the
    runs were not evaluated on the same episodes).
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no seed evaluated by both methods")
    per_seed, pooled_a, pooled_b = [], [], []
    for s in seeds:
        if len(a[s]) != len(b[s]):
            raise ValueError(f"seed {s}: {len(a[s])} vs {len(b[s])} episodes; the runs were not "
                             "evaluated on the same episodes")
        diff, se = paired_difference_se(a[s], b[s])
        per_seed.append({"seed": int(s), "difference": diff, "se": se, "episodes": len(a[s])})
        pooled_a.extend(a[s])
        pooled_b.extend(b[s])
    boot = paired_bootstrap([r["difference"] for r in per_seed], confidence, seed=bootstrap_seed)
    return {
        "seeds": [int(s) for s in seeds],
        "per_seed": per_seed,
        "difference": boot.to_dict(),
        "mcnemar": mcnemar_exact(pooled_a, pooled_b).to_dict(),
    }


def one_sided_paired_test(base: Sequence, new: Sequence) -> dict:
    """Does ``new`` succeed more often than ``base`` on the same episodes?

    The one-sided exact McNemar test (:func:`mcnemar_exact` with ``alternative="greater"``) and
    the paired difference's normal 95 % interval, ``mean ± 1.96 · SE`` with the SE of
    :func:`paired_difference_se`. Plain JSON: ``difference``, ``ci95``, ``new_only``,
    ``base_only``, ``p_value_one_sided``, ``episodes``. Needs >= 2 episodes.
    """
    if len(base) < 2 or len(base) != len(new):
        raise ValueError(f"one_sided_paired_test needs two equally long 0/1 outcome lists (>= 2 episodes), "
                         f"got {len(base)} and {len(new)}")
    test = mcnemar_exact(new, base, alternative="greater")
    diff, se = paired_difference_se(new, base)
    return {"difference": diff, "ci95": [diff - 1.96 * se, diff + 1.96 * se], "new_only": test.a_only,
            "base_only": test.b_only, "p_value_one_sided": test.p_value, "episodes": test.pairs}
