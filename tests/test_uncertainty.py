"""``jaxmat.uncertainty``: each metric on synthetic Gaussian data where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmat import uncertainty as uq


@pytest.fixture(scope="module")
def gaussian():
    """Errors drawn from N(0, (3 sigma)^2) with heteroscedastic sigma: the true scale is 3."""
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.05, 1.0, 50_000)
    return rng.normal(size=sigma.size) * 3.0 * sigma, sigma


def test_nll_scale_recovers_the_true_scale(gaussian):
    err, sigma = gaussian
    assert uq.nll_scale(err, sigma) == pytest.approx(3.0, rel=0.01)
    # the NLL is lowest at the fitted scale
    nll = [uq.gaussian_nll(err, s * sigma) for s in (2.5, 3.0, 3.5)]
    assert nll[1] < nll[0] and nll[1] < nll[2]


def test_calibrated_errors_score_as_calibrated(gaussian):
    err, sigma = gaussian
    m = uq.calibration_metrics(err, 3.0 * sigma)
    assert m["coverage_68"] == pytest.approx(0.6827, abs=0.005)
    assert m["coverage_95"] == pytest.approx(0.9545, abs=0.003)
    assert m["miscalibration_area"] < 0.005
    assert m["scale"] == pytest.approx(1.0, rel=0.01)
    # the analytic NLL of a calibrated Gaussian: E[log sigma] + log(2 pi)/2 + 1/2
    expected = np.mean(np.log(3.0 * sigma)) + 0.5 * np.log(2 * np.pi) + 0.5
    assert m["nll"] == pytest.approx(expected, abs=0.01)
    # the mean CRPS of a calibrated Gaussian is sigma / sqrt(pi)
    assert m["crps"] == pytest.approx(np.mean(3.0 * sigma) / np.sqrt(np.pi), rel=0.01)
    over = uq.calibration_metrics(err, sigma)  # 3x overconfident: far fewer errors inside the intervals
    assert over["coverage_68"] < 0.3 and over["miscalibration_area"] > 0.25


def test_reliability_curve_is_the_diagonal_when_calibrated(gaussian):
    err, sigma = gaussian
    rms_sigma, rmse, count = uq.reliability_curve(err, 3.0 * sigma, 10)
    assert count.sum() == err.size and np.all(np.diff(rms_sigma) > 0)
    np.testing.assert_allclose(rmse, rms_sigma, rtol=0.03)


def test_rank_metrics(gaussian):
    err, sigma = gaussian
    assert uq.spearman(np.abs(sigma) * np.sign(err), sigma) == pytest.approx(1.0)
    assert abs(uq.spearman(err, np.random.default_rng(1).permutation(sigma))) < 0.01
    assert uq.auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert uq.auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert uq.auroc([1.0, 1.0], [True, False]) == 0.5  # ties count half
    # sigma carries information on the errors here: the worst 10 % are flagged better than chance
    assert 0.6 < uq.flag_auroc(err, sigma, 0.1) < 1.0


def test_musil_alpha_of_a_committee_recovers_the_scale():
    """M members drawn around a truth-centred mean with spread sigma; the reference deviates from
    the committee mean by alpha x the committee's spread: alpha is recovered."""
    rng = np.random.default_rng(2)
    n, M, alpha = 40_000, 8, 2.0
    spread = rng.uniform(0.1, 1.0, n)
    members = rng.normal(size=(M, n)) * spread
    mean, std = uq.member_stats(members)
    ref = mean + alpha * spread * rng.normal(size=n)  # truth ~ N(mean, (alpha * spread)^2)
    # the estimator corrects for the sampling noise of a finite committee's spread
    assert uq.musil_alpha(mean - ref, std, M) == pytest.approx(alpha, rel=0.05)


def test_usable_drops_zero_references_and_zero_spreads():
    err, sigma = uq.usable([0.0, 1.0, 2.0, 3.0], [0.5, 0.1, 0.2, 0.3], [1.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(err, [0.2, 0.3])
    np.testing.assert_array_equal(sigma, [1.0, 2.0])


def test_round_off_spreads_do_not_set_the_calibration_scale():
    """Red team (issue 45 follow-up): stress components that every member predicts as zero by
    symmetry (a slab's xz, xy) carry a spread of ~1e-18 eV/A^3 in float64 while their labels are
    DFT noise (~0.02); kept, they made the NLL stress scale ~1e13 and stress_std ~1e4 eV/A^3."""
    rng = np.random.default_rng(0)
    sigma = rng.uniform(2e-3, 6e-3, 24)
    err = sigma * rng.normal(size=24) * 3.0
    ref = rng.normal(size=24)
    sigma[[4, 5]], err[[4, 5]] = 3e-18, 0.02            # the symmetric components
    e, s = uq.usable(ref, err, sigma)
    assert e.size == 22
    clean = uq.nll_scale(np.delete(err, [4, 5]), np.delete(sigma, [4, 5]))
    assert uq.nll_scale(e, s) == clean and 1.0 < clean < 10.0


@pytest.mark.parametrize("call, match", [
    (lambda: uq.gaussian_nll([0.1], [0.0]), "positive and finite"),
    (lambda: uq.nll_scale([], []), "no entries"),
    (lambda: uq.spearman([1.0, 2.0], [1.0]), "same size"),
    (lambda: uq.musil_alpha([0.1, 0.2], [1.0, 1.0], 3), "at least 4 members"),
    (lambda: uq.auroc([0.1, 0.2], [True, True]), "both positive and negative"),
])
def test_bad_input_names_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()
