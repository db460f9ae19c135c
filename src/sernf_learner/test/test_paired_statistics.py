"""sernf_learner.paired_statistics against answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from sernf_learner import paired_statistics as st


def test_t_interval_over_seeds():
    r = st.mean_interval([0.5, 0.6, 0.7])
    # s = 0.1, t(0.975, 2 dof) = 4.3027 (tables): half-width 4.3027 * 0.1 / sqrt(3) = 0.24841
    assert r.mean == pytest.approx(0.6) and r.n == 3
    assert r.low == pytest.approx(0.6 - 0.248414, abs=1e-5) and r.high == pytest.approx(0.6 + 0.248414, abs=1e-5)
    # 90 %: t(0.95, 2) = 2.9200 -> 0.16859
    assert st.mean_interval([0.5, 0.6, 0.7], 0.90).high == pytest.approx(0.6 + 0.168585, abs=1e-5)
    assert st.mean_interval([0.3, 0.3, 0.3]).to_dict() | {"method": ""} == \
        {"mean": pytest.approx(0.3), "low": pytest.approx(0.3), "high": pytest.approx(0.3), "n": 3, "method": ""}
    one = st.mean_interval([0.4])
    assert one.mean == 0.4 and one.low is None and one.high is None
    with pytest.raises(ValueError, match="non-empty"):
        st.mean_interval([])
    with pytest.raises(ValueError, match="confidence"):
        st.mean_interval([0.1, 0.2], confidence=95)


def test_mcnemar_exact_counts_only_discordant_pairs():
    a = [1, 1, 1, 0, 0, 1, 0]
    b = [0, 0, 0, 0, 1, 1, 0]
    r = st.mcnemar_exact(a, b)
    # discordant: A only 3, B only 1 -> P[Bin(4, 1/2) <= 1] = 5/16, two-sided 10/16
    assert (r.pairs, r.a_only, r.b_only) == (7, 3, 1) and r.p_value == pytest.approx(10 / 16)
    assert st.mcnemar_exact(b, a).p_value == pytest.approx(10 / 16)  # symmetric
    # 10 discordant pairs all won by A: 2 / 2^10
    assert st.mcnemar_exact([1] * 10 + [1] * 5, [0] * 10 + [1] * 5).p_value == pytest.approx(2 / 1024)
    assert st.mcnemar_exact([1, 0, 1, 0], [0, 1, 0, 1]).p_value == 1.0  # balanced: capped at 1
    assert st.mcnemar_exact([1, 0, 1], [1, 0, 1]).p_value == 1.0  # no discordant pair
    assert st.mcnemar_exact([True, False], [False, False]).a_only == 1
    with pytest.raises(ValueError, match="equal lengths"):
        st.mcnemar_exact([1, 0], [1])
    with pytest.raises(ValueError, match="0/1"):
        st.mcnemar_exact([0.5, 1], [1, 1])


def test_paired_bootstrap_known_answers():
    constant = st.paired_bootstrap([0.1] * 5)
    assert constant.mean == pytest.approx(0.1) and constant.low == pytest.approx(0.1) and constant.high == pytest.approx(0.1)
    # Two seeds with differences 0 and 1: resampled means are 0, 0.5, 1 with p 1/4, 1/2, 1/4,
    # so the 2.5 % and 97.5 % quantiles are 0 and 1.
    two = st.paired_bootstrap([0.0, 1.0])
    assert two.mean == 0.5 and two.low == 0.0 and two.high == 1.0
    # A clear, consistent gain keeps its interval above zero; a sign-flipping one straddles it.
    assert st.paired_bootstrap([0.2, 0.25, 0.3, 0.22, 0.28]).low > 0.0
    mixed = st.paired_bootstrap([0.25, -0.17, -0.40, 0.29, -0.03])
    assert mixed.low < 0.0 < mixed.high
    assert st.paired_bootstrap([0.3]).low is None
    assert st.paired_bootstrap([0.1, 0.4, 0.2], seed=3) == st.paired_bootstrap([0.1, 0.4, 0.2], seed=3)


def test_paired_difference_and_comparison():
    diff, se = st.paired_difference_se([1, 1, 0, 0], [0, 1, 0, 1])
    # d = [1, 0, 0, -1]: mean 0, sample std sqrt(2/3), SE sqrt(2/3) / 2
    assert diff == 0.0 and se == pytest.approx(math.sqrt(2 / 3) / 2)
    a = {0: [1, 1, 0, 1], 1: [1, 0, 0, 0], 2: [1, 1, 1, 1]}
    b = {0: [0, 1, 0, 1], 1: [1, 0, 0, 0], 3: [0, 0, 0, 0]}
    r = st.compare_paired(a, b)
    assert r["seeds"] == [0, 1]  # only the seeds both methods ran
    assert [s["difference"] for s in r["per_seed"]] == [0.25, 0.0]
    assert r["difference"]["mean"] == pytest.approx(0.125)
    assert r["mcnemar"] == {"pairs": 8, "a_only": 1, "b_only": 0, "p_value": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="same episodes"):
        st.compare_paired({0: [1, 0]}, {0: [1, 0, 1]})
    with pytest.raises(ValueError, match="no seed"):
        st.compare_paired({0: [1]}, {1: [1]})


def test_one_sided_mcnemar():
    # A wins 4, loses 1: P[Bin(5, 1/2) >= 4] = 6/32; the other direction P[Bin(5, 1/2) >= 1] = 31/32
    a = [1, 1, 1, 1, 0, 1, 0]
    b = [0, 0, 0, 0, 1, 1, 0]
    assert st.mcnemar_exact(a, b, alternative="greater").p_value == pytest.approx(6 / 32)
    assert st.mcnemar_exact(b, a, alternative="greater").p_value == pytest.approx(31 / 32)
    assert st.mcnemar_exact(a, a, alternative="greater").p_value == 1.0
    with pytest.raises(ValueError, match="alternative"):
        st.mcnemar_exact(a, b, alternative="less")


def test_one_sided_paired_test_matches_a_hand_computation():
    # 10 episodes: new wins 4 (episodes 0-3), loses 1 (episode 4), 5 concordant.
    base = [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    new = [1, 1, 1, 1, 0, 1, 1, 0, 0, 0]
    t = st.one_sided_paired_test(base, new)
    assert (t["new_only"], t["base_only"], t["episodes"]) == (4, 1, 10)
    # P[Binomial(5, 1/2) >= 4] = (5 + 1) / 32
    assert t["p_value_one_sided"] == pytest.approx(6 / 32)
    # d = new - base: four +1, one -1, five 0: mean 0.3, sd(ddof=1) = sqrt((4*0.49 + 1.69 + 5*0.09) / 9)
    half = 1.96 * ((4 * 0.49 + 1.69 + 5 * 0.09) / 9) ** 0.5 / 10 ** 0.5
    assert t["difference"] == pytest.approx(0.3)
    assert t["ci95"] == pytest.approx([0.3 - half, 0.3 + half])
    # Identical rows: no evidence either way.
    assert st.one_sided_paired_test(base, base)["p_value_one_sided"] == 1.0
    with pytest.raises(ValueError, match="equally long"):
        st.one_sided_paired_test(base, new[:-1])
    with pytest.raises(ValueError, match="0/1"):
        st.one_sided_paired_test(base, [2] * 10)
