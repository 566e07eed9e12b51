"""Corruptions: gains leave closure quantities unchanged; noise has the stated statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interfero.closures import observed_closure_phases, observed_log_closure_amplitudes
from interfero.corruptions import (
    add_systematic_noise,
    add_thermal_noise,
    apply_station_gains,
    random_station_gains,
)
from interfero.errors import InterferoError
from interfero.io import ImageGeometry
from interfero.models import render
from interfero.simulate import observe_same, simulate
from interfero.uvcoverage import ObservingSetup


@pytest.fixture(scope="module")
def clean_obs():
    geom = ImageGeometry(32, 160.0)
    img = render("crescent", geom, flux=2.0)
    return simulate(img, geom, "EHT2018", ObservingSetup(tadv=1200.0), thermal_noise=False)


def test_station_gains_change_vis_but_not_closures(clean_obs):
    rng = np.random.default_rng(0)
    gains = random_station_gains(clean_obs, rng, amp_std=0.2, phase_std_deg=None)
    corrupted = apply_station_gains(clean_obs, gains)
    assert np.abs(corrupted.vis - clean_obs.vis).max() > 0.1 * np.abs(clean_obs.vis).max()
    cp0, _ = observed_closure_phases(clean_obs)
    cp1, _ = observed_closure_phases(corrupted)
    assert np.abs(np.angle(np.exp(1j * (cp1 - cp0)))).max() < 1e-6
    lc0, _ = observed_log_closure_amplitudes(clean_obs, debias=False)
    lc1, _ = observed_log_closure_amplitudes(corrupted, debias=False)
    assert np.abs(lc1 - lc0).max() < 1e-6


def test_thermal_noise_statistics(clean_obs):
    rng = np.random.default_rng(1)
    noisy = add_thermal_noise(clean_obs, rng)
    z = (noisy.vis - clean_obs.vis) / clean_obs.sigma
    n = len(z)
    assert abs(z.real.std() - 1) < 5 / np.sqrt(2 * n) + 0.02 and abs(z.imag.std() - 1) < 5 / np.sqrt(2 * n) + 0.02
    assert abs(z.real.mean()) < 5 / np.sqrt(n)


def test_systematic_noise_inflates_sigma(clean_obs):
    out = add_systematic_noise(clean_obs, 0.05)
    assert np.allclose(out.sigma, np.hypot(clean_obs.sigma, 0.05 * np.abs(clean_obs.vis)))
    assert np.array_equal(out.vis, clean_obs.vis)
    with pytest.raises(InterferoError):
        add_systematic_noise(clean_obs, -0.1)


def test_operator_sample_matches_thermal_noise_level(clean_obs):
    from interfero.operators import InterferometryOperator

    geom = ImageGeometry(32, 160.0)
    img = torch.tensor(render("crescent", geom, flux=2.0))[None, None]
    op = InterferometryOperator(clean_obs, geom, products=("vis", "cphase"))
    y = op.sample(img.expand(200, -1, -1, -1), torch.Generator().manual_seed(0))
    chi2 = op.chi2(img.expand(200, -1, -1, -1), y)
    assert abs(float(chi2["vis"].mean()) - 1) < 0.02
    assert abs(float(chi2["cphase"].mean()) - 1) < 0.1


def test_gain_shape_error(clean_obs):
    with pytest.raises(InterferoError, match="gains must have shape"):
        apply_station_gains(clean_obs, np.ones((2, 2)))


def test_observe_same_rejects_mismatched_image(clean_obs):
    with pytest.raises(InterferoError, match="pixels"):
        observe_same(np.ones((16, 16)), ImageGeometry(32, 160.0), clean_obs)
    with pytest.raises(InterferoError, match="square"):
        observe_same(np.ones((16, 8)), ImageGeometry(16, 160.0), clean_obs)
