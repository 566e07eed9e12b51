"""Our forward model against ehtim (the oracle) on the shared observations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interfero.arrays import load_array
from interfero.closures import observed_closure_phases, observed_log_closure_amplitudes
from interfero.io import ImageGeometry, quiet, read_fits_image, read_uvfits, write_fits_image, write_uvfits
from interfero.models import render
from interfero.operators import InterferometryOperator, VisibilityOperator, dft_matrix
from interfero.uvcoverage import ObservingSetup, uv_coverage

from .conftest import shared_path


def _ehtim_obs(eh, path):
    with quiet():
        return eh.obsdata.load_uvfits(str(path))


def test_dft_matrix_matches_ftmatrix(eh, obs_path):
    obs = read_uvfits(obs_path)
    geom = ImageGeometry(24, 180.0)
    ours = dft_matrix(obs.u, obs.v, geom)
    theirs = eh.observing.obs_helpers.ftmatrix(geom.psize_rad, 24, 24, np.stack([obs.u, obs.v], 1))
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-9


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_visibilities_match_observe_same_nonoise(eh, grmhd_path, dtype, tol):
    img, geom = read_fits_image(grmhd_path / "truth.fits")
    obs = read_uvfits(grmhd_path / "obs.uvfits")
    op = VisibilityOperator(obs.u, obs.v, geom)
    ours = op(torch.tensor(img, dtype=dtype)[None, None]).detach().numpy()[0]
    with quiet():
        im = eh.image.load_fits(str(grmhd_path / "truth.fits"))
        ref = im.observe_same_nonoise(_ehtim_obs(eh, grmhd_path / "obs.uvfits"), ttype="direct").data["vis"]
    assert np.abs(ours - ref).max() / np.abs(ref).max() < tol


def test_observe_same_matches_ehtim(eh, grmhd_path):
    from interfero.simulate import observe_same

    img, geom = read_fits_image(grmhd_path / "truth.fits")
    obs = read_uvfits(grmhd_path / "obs.uvfits")
    ours = observe_same(img, geom, obs).vis
    with quiet():
        im = eh.image.load_fits(str(grmhd_path / "truth.fits"))
        ref = im.observe_same_nonoise(_ehtim_obs(eh, grmhd_path / "obs.uvfits"), ttype="direct").data["vis"]
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-10


def test_closure_phases_match_ehtim(eh, obs_path):
    obs = read_uvfits(obs_path)
    with quiet():
        ref = _ehtim_obs(eh, obs_path).c_phases(count="min", ang_unit="deg")
    cp, sig = observed_closure_phases(obs)
    names = np.array(obs.stations)
    st = obs.closures.tri_stations
    assert len(cp) == len(ref)
    assert np.all(names[st[:, 0]] == ref["t1"]) and np.all(names[st[:, 1]] == ref["t2"])
    assert np.all(names[st[:, 2]] == ref["t3"]) and np.allclose(obs.closures.tri_time, ref["time"])
    diff = np.degrees(cp) - ref["cphase"]
    diff = (diff + 180.0) % 360.0 - 180.0
    assert np.abs(diff).max() < 1e-3
    assert np.allclose(np.degrees(sig), ref["sigmacp"], rtol=1e-8)


def test_log_closure_amplitudes_match_ehtim(eh, obs_path):
    obs = read_uvfits(obs_path)
    with quiet():
        ref = _ehtim_obs(eh, obs_path).c_amplitudes(ctype="logcamp", count="min")
    lc, sig = observed_log_closure_amplitudes(obs)
    names = np.array(obs.stations)
    st = obs.closures.quad_stations
    assert len(lc) == len(ref)
    for k, f in enumerate(["t1", "t2", "t3", "t4"]):
        assert np.all(names[st[:, k]] == ref[f])
    assert np.abs(lc - ref["camp"]).max() < 1e-5
    assert np.abs(sig - ref["sigmaca"]).max() < 1e-5


@pytest.mark.parametrize("product", ["vis", "amp", "cphase", "logcamp"])
def test_reduced_chi2_matches_ehtim(eh, obs_path, product):
    obs = read_uvfits(obs_path)
    geom = ImageGeometry(20, 160.0, ra=obs.ra, dec=obs.dec)
    img = render("crescent", geom, flux=1.7, diameter=40, width=12, pa=120)
    op = InterferometryOperator(obs, geom, products=(product,))
    ours = float(op.chi2(torch.tensor(img)[None, None])[product][0])
    with quiet():
        o = _ehtim_obs(eh, obs_path)
        fov = geom.fov_uas * eh.RADPERUAS
        im = eh.image.make_empty(geom.npix, fov, o.ra, o.dec, rf=o.rf, source=o.source, mjd=o.mjd)
        im.imvec = img.flatten()
        ref = o.chisq(im, dtype=product, ttype="direct")
    assert abs(ours / ref - 1) < 1e-4


def test_uv_coverage_matches_ehtim_obsdata(eh):
    table = shared_path("arrays", "EHT2017.txt")
    array = load_array(table).sorted_by_sefd()
    setup = ObservingSetup(tint=30.0, tadv=900.0, mjd=57849, elev_min=10.0, elev_max=85.0)
    ours = uv_coverage(array, setup)
    with quiet():
        earr = eh.array.load_txt(str(table))
        ref = earr.obsdata(setup.ra, setup.dec, setup.rf, setup.bw, setup.tint, setup.tadv, setup.tstart,
                           setup.tstop, mjd=setup.mjd, timetype="UTC", elevmin=10.0, elevmax=85.0).data
    names = np.array(ours.stations)
    a = sorted(zip(ours.time, names[ours.t1], names[ours.t2], ours.u, ours.v, ours.sigma))
    b = sorted(zip(ref["time"], ref["t1"], ref["t2"], ref["u"], ref["v"], ref["sigma"]))
    assert [r[:3] for r in a] == [r[:3] for r in b]  # same baselines survive the elevation cut
    a = np.array([r[3:] for r in a])
    b = np.array([r[3:] for r in b])
    scale = np.abs(b[:, :2]).max()
    assert np.abs(a[:, :2] - b[:, :2]).max() / scale < 1e-6
    assert np.abs(a[:, 2] / b[:, 2] - 1).max() < 1e-6


def test_fits_roundtrip_with_ehtim(eh, tmp_path):
    geom = ImageGeometry(32, 150.0, ra=12.51373, dec=12.39112, rf=228e9, mjd=57854, source="M87")
    img = render("crescent", geom, flux=0.6)
    write_fits_image(img, geom, tmp_path / "im.fits")
    with quiet():
        im = eh.image.load_fits(str(tmp_path / "im.fits"))
    assert np.allclose(im.imvec.reshape(32, 32), img)
    assert abs(im.psize / geom.psize_rad - 1) < 1e-12
    assert abs(im.ra - geom.ra) < 1e-10 and abs(im.dec - geom.dec) < 1e-10 and im.rf == geom.rf
    back, g2 = read_fits_image(tmp_path / "im.fits")
    assert np.array_equal(back, img) and abs(g2.fov_uas - 150.0) < 1e-9 and g2.mjd == 57854


def test_uvfits_roundtrip_keeps_data_and_closures(eh, small_obs, tmp_path):
    write_uvfits(small_obs, tmp_path / "o.uvfits")
    back = read_uvfits(tmp_path / "o.uvfits")
    assert back.stations == small_obs.stations
    assert back.n_vis == small_obs.n_vis
    # uvfits stores times in single precision: match rows by (time to 1 s, t1, t2)
    def order(o):
        return np.lexsort((o.t2, o.t1, np.round(o.time * 3600)))

    a, b = order(small_obs), order(back)
    assert np.array_equal(small_obs.t1[a], back.t1[b]) and np.array_equal(small_obs.t2[a], back.t2[b])
    assert np.allclose(back.u[b], small_obs.u[a], rtol=1e-6, atol=1e-6 * np.abs(small_obs.u).max())
    assert np.allclose(back.vis[b], small_obs.vis[a], rtol=1e-5, atol=1e-6)
    assert np.allclose(back.sigma[b], small_obs.sigma[a], rtol=1e-5)
    assert back.closures.n_cphase == small_obs.closures.n_cphase
    assert np.array_equal(back.closures.quad_stations, small_obs.closures.quad_stations)
    with quiet():
        ref = eh.obsdata.load_uvfits(str(tmp_path / "o.uvfits")).c_phases(count="min")
    assert len(ref) == small_obs.closures.n_cphase


def test_nufft_agrees_with_dft(grmhd_path):
    pytest.importorskip("finufft")
    img, geom = read_fits_image(grmhd_path / "truth.fits")
    obs = read_uvfits(grmhd_path / "obs.uvfits")
    x = torch.tensor(img)[None, None]
    dft = VisibilityOperator(obs.u, obs.v, geom)(x)
    nufft = VisibilityOperator(obs.u, obs.v, geom, method="nufft")(x)
    assert (torch.abs(dft - nufft).max() / torch.abs(dft).max()).item() < 1e-3


def test_eht_release_station_names_and_zero_baselines(eh, tmp_path):
    """Two-letter EHT release codes, co-located AA/AP (a zero baseline) and JC/SM survive a round trip."""
    from dataclasses import replace as dc_replace

    from interfero.arrays import Array
    from interfero.simulate import simulate

    codes = {"ALMA": "AA", "APEX": "AP", "JCMT": "JC", "LMT": "LM", "PV": "PV", "SMA": "SM", "SMT": "AZ",
             "SPT": "SP"}
    base = load_array("EHT2017")
    stations = []
    for s in base.stations:
        xyz = base.stations[base.index("ALMA")].xyz if s.name == "APEX" else s.xyz  # exactly co-located
        stations.append(dc_replace(s, name=codes[s.name], x=xyz[0], y=xyz[1], z=xyz[2]))
    arr = Array(tuple(stations), name="EHT2017-codes")
    geom = ImageGeometry(16, 160.0)
    obs = simulate(render("crescent", geom), geom, arr, ObservingSetup(tadv=1800.0), seed=3)
    assert np.any(obs.uvdist == 0.0)
    write_uvfits(obs, tmp_path / "release.uvfits")
    back = read_uvfits(tmp_path / "release.uvfits")
    assert set(back.stations) == set(codes.values())
    with quiet():
        ref = eh.obsdata.load_uvfits(str(tmp_path / "release.uvfits")).c_phases(count="min")
    cp, _ = observed_closure_phases(back)
    diff = (np.degrees(cp) - ref["cphase"] + 180.0) % 360.0 - 180.0
    assert len(cp) == len(ref) and np.abs(diff).max() < 1e-3
