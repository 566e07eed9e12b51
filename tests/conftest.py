"""Shared fixtures: the shared observations (skipped with a reason when absent) and ehtim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OBS_NAMES = ["grmhd_sgra_2017", "ehtim_sample"]


def shared_path(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data {p} not present (only in the project's CI and dev checkouts)")
    return p


@pytest.fixture(scope="session")
def eh():
    from interfero.io import import_ehtim

    return import_ehtim()


@pytest.fixture(params=OBS_NAMES)
def obs_path(request) -> Path:
    return shared_path("observations", request.param, "obs.uvfits")


@pytest.fixture
def grmhd_path() -> Path:
    return shared_path("observations", "grmhd_sgra_2017")


@pytest.fixture(scope="session")
def small_obs():
    """A short noiseless-uv EHT2017 observation simulated from a crescent (no shared data needed)."""
    from interfero.io import ImageGeometry
    from interfero.models import render
    from interfero.simulate import simulate
    from interfero.uvcoverage import ObservingSetup

    geom = ImageGeometry(16, 160.0)
    img = render("crescent", geom, flux=1.5)
    setup = ObservingSetup(tstart=0.0, tstop=8.0, tadv=1800.0)
    return simulate(img, geom, "EHT2017", setup, seed=1)


def test_image(npix: int, seed: int = 0, dtype=np.float64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 1.0, (npix, npix)).astype(dtype)


test_image.__test__ = False
