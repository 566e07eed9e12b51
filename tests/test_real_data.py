"""Real EHT data: the public 2017 M87 release is read (Stokes I from the parallel hands, cross hands
ignored, as ehtim reads it), averaged coherently (ehtim's avg_coherent as the oracle) and prepared."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

from interfero.averaging import average_coherent, scan_index
from interfero.errors import InterferoError
from interfero.io import observation_to_ehtim, quiet, read_uvfits
from interfero.preparation import parse_avg, prepare_observation
from posterior.cli import main

from .conftest import shared_path

M87 = ("observations", "m87_2017_eht_sr1")
M87_FILES = [f"SR1_M87_2017_{day}_{band}_hops_netcal_StokesI.uvfits" for day in ("095", "096", "100")
             for band in ("lo", "hi")]


def m87(name: str = M87_FILES[0]):
    return shared_path(*M87, name)


@pytest.mark.parametrize("name", M87_FILES)
def test_m87_release_reads_as_ehtim_reads_its_stokes_i(eh, name):
    path = m87(name)
    with fits.open(path) as h:  # the release: RR, LL carry Stokes I; RL, LR are zero with zero sigma
        wt = np.asarray(h[0].data["DATA"], dtype=float)[..., 2]
        assert np.isinf(wt[..., 2:]).any() and np.all(np.isfinite(wt[..., :2]))
    obs = read_uvfits(path)
    with quiet():
        o = eh.obsdata.load_uvfits(str(path), polrep="stokes")
    assert obs.n_vis == len(o.data) > 2000
    np.testing.assert_allclose(obs.vis, o.data["vis"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(obs.sigma, o.data["sigma"], rtol=1e-12)
    assert obs.source == "M87" and 227e9 < obs.rf < 230e9
    assert {"AA", "AP", "AZ", "JC", "LM", "PV", "SM"} <= {obs.stations[i] for i in np.union1d(obs.t1, obs.t2)}


def _with_weights(tmp_path, name, hand, value):
    src = m87()
    with fits.open(src) as h:
        h[0].data["DATA"][:5, ..., hand, 2] = value
        h.writeto(tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("hand,value,match", [(0, np.nan, "Stokes I (RR/LL) visibility weights are NaN"),
                                              (1, np.inf, "NaN or zero sigma")])
def test_nan_or_zero_stokes_i_sigma_still_refused(tmp_path, hand, value, match):
    with pytest.raises(InterferoError, match=match.replace("(", r"\(").replace(")", r"\)")):
        read_uvfits(_with_weights(tmp_path, "bad.uvfits", hand, value))


def test_cross_hand_weights_are_ignored(tmp_path):
    obs = read_uvfits(_with_weights(tmp_path, "x.uvfits", 2, np.nan))  # NaN RL weight: not Stokes I
    assert obs.n_vis == read_uvfits(m87()).n_vis


def test_flagged_parallel_hands_are_counted_and_dropped(tmp_path):
    src = m87()
    with fits.open(src) as h:
        h[0].data["DATA"][:7, ..., :2, 2] = 0.0
        h.writeto(tmp_path / "f.uvfits")
    obs = read_uvfits(tmp_path / "f.uvfits")
    assert obs.meta["flagged_points"] == 7 and obs.n_vis == read_uvfits(src).n_vis - 7
    _, rep = prepare_observation(obs)
    assert "dropped 7 flagged points" in rep.lines()[0]


# ------------------------------------------------------------------ averaging
@pytest.fixture(scope="module")
def m87_obs():
    return read_uvfits(m87())


def _match(ours, o, stations, key):
    mine = {key(t, stations[a], stations[b]): (v, s, u, vv, ti) for t, a, b, v, s, u, vv, ti in
            zip(ours.time, ours.t1, ours.t2, ours.vis, ours.sigma, ours.u, ours.v, ours.tint)}
    assert len(mine) == ours.n_vis == len(o.data)
    got = np.array([mine[key(r["time"], r["t1"], r["t2"])] for r in o.data])
    ref = np.stack([o.data[k] for k in ("vis", "sigma", "u", "v", "tint")], 1)
    return got, ref


def test_fixed_interval_average_matches_ehtim(eh, m87_obs):
    avg, summary = average_coherent(m87_obs, 60.0, weighting="uniform")
    with quiet():
        o = observation_to_ehtim(m87_obs).avg_coherent(60.0)
    got, ref = _match(avg, o, m87_obs.stations, lambda t, a, b: (int(np.floor(t * 60.0 + 1e-9)), a, b))
    np.testing.assert_allclose(got[:, 0], ref[:, 0], rtol=0, atol=1e-12)  # complex visibilities, Jy
    np.testing.assert_allclose(got[:, 1:].real, ref[:, 1:].real, rtol=1e-12)  # sigma, u, v, tint
    assert summary.n_in == m87_obs.n_vis and summary.n_out == avg.n_vis


def test_scan_average_matches_ehtim(eh, m87_obs):
    avg, summary = average_coherent(m87_obs, "scan", weighting="uniform")
    with quiet():
        o = observation_to_ehtim(m87_obs)
        o.add_scans(dt=60.0 / 3600.0)
        o = o.avg_coherent(0.0, scan_avg=True)
    edges = o.scans[:, 0]
    got, ref = _match(avg, o, m87_obs.stations, lambda t, a, b: (int(np.searchsorted(edges, t)), a, b))
    np.testing.assert_allclose(got[:, 0], ref[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[:, 1:].real, ref[:, 1:].real, rtol=1e-12)
    assert summary.n_scans == len(edges) and summary.median_snr_out > 5 * summary.median_snr_in
    # every baseline of a scan shares its time, so closures form across the whole scan
    assert len(np.unique(avg.time)) == summary.n_scans
    assert avg.closures.n_cphase > 0


def test_inverse_variance_average_closed_form():
    from interfero.observation import Observation

    t = np.array([0.0, 10.0, 20.0, 1000.0]) / 3600.0
    obs = Observation(time=t, t1=[0, 0, 1, 0], t2=[1, 1, 0, 1], u=[1e9, 1.1e9, -1.2e9, 2e9], v=[0.0, 0, 0, 0],
                      vis=[1 + 1j, 2 + 0j, 3 - 1j, 5j], sigma=[1.0, 2.0, 1.0, 0.5], stations=("A", "B"),
                      tint=[10.0, 10.0, 10.0, 10.0])
    avg, s = average_coherent(obs, "scan")
    assert s.n_scans == 2 and avg.n_vis == 2
    w = np.array([1.0, 0.25, 1.0])
    vis = np.array([1 + 1j, 2 + 0j, 3 + 1j])  # the reversed row conjugated
    assert avg.vis[0] == pytest.approx((w * vis).sum() / w.sum(), abs=1e-15)
    assert avg.sigma[0] == pytest.approx(1 / np.sqrt(w.sum()), abs=1e-15)
    assert avg.u[0] == pytest.approx(1.1e9) and avg.tint[0] == 30.0
    assert avg.time[0] == pytest.approx(10.0 / 3600.0) and avg.vis[1] == 5j


def test_scan_index_splits_at_gaps():
    t = np.array([0, 10, 20, 200, 210, 5000]) / 3600.0
    assert scan_index(t, 60.0).tolist() == [0, 0, 0, 1, 1, 2]


@pytest.mark.parametrize("avg,match", [("0", None), ("-5", "must be > 0"), ("nan", "must be > 0"),
                                       ("1e9", "longer than the track"), ("foo", "auto, scan, none")])
def test_bad_averaging_intervals(m87_obs, avg, match):
    if match is None:
        assert parse_avg(avg) is None
        return
    with pytest.raises(InterferoError, match=match):
        prepare_observation(m87_obs, avg)


def test_auto_averages_real_files_and_leaves_simulations(m87_obs, small_obs):
    obs, rep = prepare_observation(m87_obs, "auto")
    assert rep.averaging["interval"] == "scan" and obs.n_vis < m87_obs.n_vis / 20
    assert any("auto: 9.19 s integrations" in line for line in rep.lines()) and "SR" in rep.dropped_stations
    same, rep2 = prepare_observation(small_obs, "auto", sys_noise=0.01)
    assert rep2.averaging is None and same.n_vis == small_obs.n_vis
    assert np.all(same.sigma > small_obs.sigma)


def test_inspect_says_what_it_averaged_and_dropped(tmp_path, capsys):
    code = main(["inspect", str(m87()), "--json", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert code == 0
    assert "averaged coherently per scan" in out and "dropped stations without data: SR" in out
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["as_read"]["n_vis"] == 6453 and s["n_vis"] == s["preparation"]["averaging"]["n_out"] < 400
    code = main(["inspect", str(m87()), "--avg", "-1"])
    assert code == 2 and "must be > 0" in capsys.readouterr().err


def test_compact_flux_rescales_only_the_intra_site_baselines(m87_obs):
    obs, rep = prepare_observation(m87_obs, "scan", 0.0, compact_flux=0.6)
    ref, rep0 = prepare_observation(m87_obs, "scan", 0.0)
    short = ref.uvdist < 1e8
    assert {ref.baseline_names()[i] for i in np.flatnonzero(short)} == {"AA-AP", "JC-SM"}
    assert rep0.zero_baseline_flux_jy == pytest.approx(np.median(np.abs(ref.vis[short])))
    assert 1.0 < rep0.zero_baseline_flux_jy < 1.3  # M87's compact ring plus its arcsecond jet
    f = 0.6 / rep0.zero_baseline_flux_jy
    assert rep.short_baselines_scaled_by == pytest.approx(f)
    np.testing.assert_allclose(obs.vis[short], ref.vis[short] * f, rtol=1e-14)
    np.testing.assert_allclose(obs.sigma[short], ref.sigma[short] * f, rtol=1e-14)
    np.testing.assert_array_equal(obs.vis[~short], ref.vis[~short])
    # closure phases do not change (a real factor), closure amplitudes with an intra-site baseline do
    assert "scaled by" in "\n".join(rep.lines())


def test_sys_noise_auto_is_two_percent_for_real_files_only(m87_obs, small_obs):
    obs, rep = prepare_observation(m87_obs, "scan", "auto")
    ref, _ = prepare_observation(m87_obs, "scan", 0.0)
    assert rep.sys_noise == 0.02 and "real correlator output" in rep.lines()[-1]
    np.testing.assert_allclose(obs.sigma, np.hypot(ref.sigma, 0.02 * np.abs(ref.vis)), rtol=1e-14)
    _, rep2 = prepare_observation(m87_obs, "none", "auto")  # the detection is of the file, not of --avg
    assert rep2.sys_noise == 0.02
    _, rep3 = prepare_observation(small_obs, "auto", "auto")
    assert rep3.sys_noise == 0.0
    for bad in ("-0.1", "1", "nan", "lots"):
        with pytest.raises(InterferoError, match="--sys-noise"):
            prepare_observation(small_obs, "auto", bad)


def test_combining_days_and_bands():
    from interfero.preparation import combine_observations

    lo, _ = prepare_observation(read_uvfits(m87(M87_FILES[0])), "scan")
    hi, _ = prepare_observation(read_uvfits(m87(M87_FILES[1])), "scan")
    day2, _ = prepare_observation(read_uvfits(m87(M87_FILES[2])), "scan")
    with pytest.raises(InterferoError, match="different frequencies.*--combine-frequencies"):
        combine_observations([lo, hi])
    both = combine_observations([lo, hi], allow_frequencies=True)
    # closures stay within a band: the combined sets are the two files' sets side by side
    assert both.n_vis == lo.n_vis + hi.n_vis
    assert both.closures.n_cphase == lo.closures.n_cphase + hi.closures.n_cphase
    assert both.closures.n_logcamp == lo.closures.n_logcamp + hi.closures.n_logcamp
    assert both.rf == pytest.approx(0.5 * (lo.rf + hi.rf))
    days = combine_observations([lo, day2])
    assert days.mjd == 57848 and days.time.max() > 24.0  # day 096 follows day 095
    assert days.closures.n_cphase == lo.closures.n_cphase + day2.closures.n_cphase


def test_combining_different_sources_is_refused(grmhd_path):
    from interfero.preparation import combine_observations

    with pytest.raises(InterferoError, match="different sources"):
        combine_observations([read_uvfits(m87()), read_uvfits(grmhd_path / "obs.uvfits")])


def test_reconstruct_refuses_two_bands_without_the_flag(tmp_path, capsys):
    out = tmp_path / "rec"
    code = main(["reconstruct", str(m87(M87_FILES[0])), str(m87(M87_FILES[1])), "--out", str(out), "--steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--combine-frequencies" in err[0]
    assert not out.exists()


def test_duplicate_rows_are_refused_not_silently_dropped(small_obs):
    from interfero.observation import Observation

    o = small_obs
    rows = np.r_[np.arange(o.n_vis), [3]]  # row 3 twice, the copy reversed (same baseline, other orientation)
    flip = np.zeros(len(rows), bool)
    flip[-1] = True
    dup = Observation(time=o.time[rows], t1=np.where(flip, o.t2[rows], o.t1[rows]),
                      t2=np.where(flip, o.t1[rows], o.t2[rows]), u=o.u[rows], v=o.v[rows], vis=o.vis[rows],
                      sigma=o.sigma[rows], stations=o.stations)
    with pytest.raises(InterferoError, match="1 duplicate visibility rows"):
        _ = dup.closures
