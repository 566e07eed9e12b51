"""interfero array-study: one truth, several arrays, compared (outputs and bad input; tiny fits)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from interfero.errors import InterferoError
from posterior.array_study import array_study
from posterior.cli import main
from posterior.reconstruct import ReconstructSettings

DEMO_TRUTH = Path(__file__).resolve().parents[1] / "data" / "demo" / "crescent_grf_64.fits"
TINY = ReconstructSettings(steps=2, batch=2, samples=4, elbo_draws=1, flow_blocks=2, threads=2, ensemble=1,
                           max_chi2=1e30)  # 2-step fits do not converge; the chi^2 guard is tested elsewhere


def test_array_study_writes_a_ranked_comparison(tmp_path):
    arrays = ["EHT2017-JCMT-SMT-APEX", "EHT2017"]
    res = array_study(str(DEMO_TRUTH), arrays, tmp_path / "study", TINY, progress=False)
    rows = res["arrays"]
    assert list(rows) == arrays
    assert sorted(r["rank"] for r in rows.values()) == [1, 2]
    for r in rows.values():
        assert r["mean_std_jy"] > 0 and np.isfinite(r["nxcorr_blur10"])
        assert r["mean_within_fit_std_jy"] > 0 and r["mean_between_fit_std_jy"] == 0  # one fit (TINY)
        assert set(r) >= {"mean_std_jy", "nxcorr_blur10", "ring_diameter_interval_uas", "rank", "n_sites"}
        assert 0 < r["laplace_mean_std_jy"] < np.inf and 0 < r["laplace_mean_std_source_jy"] < np.inf
    assert rows["EHT2017"]["n_sites"] == 6 and rows["EHT2017-JCMT-SMT-APEX"]["n_sites"] == 5
    assert "SMT" not in rows["EHT2017-JCMT-SMT-APEX"]["stations"]
    out = tmp_path / "study"
    assert json.loads((out / "arrays.json").read_text())["arrays"].keys() == rows.keys()
    assert (out / "arrays.png").stat().st_size > 0 and "| 1 |" in (out / "arrays.md").read_text()
    for a in arrays:
        assert (out / a / "obs.uvfits").is_file() and (out / a / "metrics.json").is_file()


@pytest.mark.parametrize("arrays,match", [("EHT2017,EHT2017+XYZ", "unknown station 'XYZ'"),
                                          ("EHT2017-LMT-PV-SMT-SPT", "2 sites"),
                                          ("EHT2017,EHT2017", "names an array twice"),
                                          ("EHT1999", "unknown array")])
def test_array_study_bad_input(tmp_path, capsys, arrays, match):
    out = tmp_path / "o"
    code = main(["array-study", "--truth", str(DEMO_TRUTH), "--arrays", arrays, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert not out.exists()


def test_array_study_of_a_prior_draw(tmp_path):
    res = array_study("prior", ["EHT2017"], tmp_path / "p", TINY, progress=False)
    row = res["arrays"]["EHT2017"]
    assert row["rank"] == 1 and row["mean_std_jy"] > 0
    from interfero.io import read_fits_image

    truth, geom = read_fits_image(tmp_path / "p" / "truth.fits")  # the draw is written as the study's truth
    assert truth.shape == (32, 32) and geom.fov_uas == 160.0 and truth.sum() > 0


def test_blurred_std_is_the_std_of_blurred_samples(tmp_path):
    import h5py

    from posterior.metrics import blur_circular

    res = array_study(str(DEMO_TRUTH), ["EHT2017"], tmp_path / "b", TINY, progress=False)
    row = res["arrays"]["EHT2017"]
    with h5py.File(tmp_path / "b" / "EHT2017" / "samples.h5", "r") as f:  # one fit (TINY): a plain std
        x = f["samples"][:].astype(np.float64).reshape(-1, 32, 32)
    blurred = np.stack([blur_circular(p, 10.0, 5.0) for p in x])
    assert row["mean_std_blur10_jy"] == pytest.approx(blurred.std(0, ddof=1).mean(), rel=1e-6)
    assert row["mean_std_blur10_jy"] < row["mean_std_jy"]  # blurring averages pixel-scale scatter away
    # the source-pixel std: the std map over the truth's pixels >= 10% of its peak, moved by the nxcorr shift
    from interfero.io import read_fits_image
    from posterior.metrics import shift_image

    truth, _ = read_fits_image(tmp_path / "b" / "truth.fits")
    t32 = truth.reshape(32, 2, 32, 2).sum(axis=(1, 3))  # the 64-pixel demo truth on the 32-pixel grid
    dy, dx = json.loads((tmp_path / "b" / "EHT2017" / "metrics.json").read_text())["nxcorr_shift_px"]
    moved = shift_image(t32, (-dy, -dx))
    std, _ = read_fits_image(tmp_path / "b" / "EHT2017" / "std.fits")
    assert row["mean_std_source_jy"] == pytest.approx(std[moved >= 0.1 * moved.max()].mean(), rel=1e-9)


def test_array_study_resumes_from_its_reconstructions(tmp_path, capsys):
    out = tmp_path / "r"
    first = array_study(str(DEMO_TRUTH), ["EHT2017"], out, TINY, progress=False)
    code = main(["array-study", "--truth", str(DEMO_TRUTH), "--arrays", "EHT2017", "--out", str(out)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err  # an earlier study is not silently replaced
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("EHT2017/**/dpi-checkpoint-*.safetensors")}
    assert stamps
    again = array_study(str(DEMO_TRUTH), ["EHT2017"], out, TINY, progress=False, resume=True)
    a, b = first["arrays"]["EHT2017"], again["arrays"]["EHT2017"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the finished fit reloaded, not refit
    assert b["mean_std_jy"] == pytest.approx(a["mean_std_jy"], rel=1e-6)
    assert b["nxcorr_blur10"] == pytest.approx(a["nxcorr_blur10"], rel=1e-6)
    with pytest.raises(InterferoError, match="give one of them"):
        array_study(str(DEMO_TRUTH), ["EHT2017"], out, TINY, progress=False, resume=True, overwrite=True)



def test_array_study_passes_the_fit_settings_to_each_reconstruction(tmp_path, monkeypatch):
    import posterior.array_study as study
    from posterior.cli import main

    seen = {}

    def fake(truth, arrays, out, settings, **kw):
        seen["s"] = settings
        return {"arrays": {}}

    monkeypatch.setattr(study, "array_study", fake)
    monkeypatch.setattr(study, "markdown", lambda rows: "")
    code = main(["array-study", "--truth", str(DEMO_TRUTH), "--arrays", "EHT2017", "--out", str(tmp_path / "o"),
                 "--flow-basis", "dct", "--prior-method", "score", "--laplace-start", "own"])
    assert code == 0
    assert (seen["s"].flow_basis, seen["s"].prior_method, seen["s"].laplace_start) == ("dct", "score", "own")


def test_array_study_ends_each_fit_in_a_laplace_based_flow_by_default(tmp_path):
    """The study compares posterior widths: by default (CLI and settings) each fit ends in a flow with the
    Laplace covariance; a study run with it writes that flow's checkpoint."""
    from posterior.array_study import STUDY_FLOW_BASE
    from posterior.cli import build_parser

    args = build_parser().parse_args(["array-study", "--truth", "t.fits", "--arrays", "EHT2017", "--out", "o"])
    assert args.flow_base == STUDY_FLOW_BASE == "laplace"
    assert (args.flow_basis, args.prior_method) == ("pixel", "elbo")  # reconstruct's defaults, settable as there
    args = build_parser().parse_args(["array-study", "--truth", "t.fits", "--arrays", "EHT2017", "--out", "o",
                                      "--flow-basis", "dct", "--prior-method", "score"])
    assert (args.flow_basis, args.prior_method) == ("dct", "score")
    array_study(str(DEMO_TRUTH), ["EHT2017"], tmp_path / "l", replace(TINY, flow_base="laplace"), progress=False)
    assert json.loads((tmp_path / "l" / "EHT2017" / "dpi-checkpoint.json").read_text())["flow"]["base_rank"] > 0


def test_arrays_reconstructed_in_parallel_give_the_same_fits(tmp_path):
    from interfero.io import read_fits_image
    from interfero.uvcoverage import ObservingSetup
    from posterior.array_study import _run_arrays

    image, geom = read_fits_image(DEMO_TRUTH)
    setup = ObservingSetup(ra=geom.ra, dec=geom.dec, source=geom.source)
    s = replace(TINY, flux=float(image.sum()))

    def jobs(name):
        (tmp_path / name).mkdir()
        return [(a, image, geom, setup, tmp_path / name / a, s, None, False, False) for a in ("EHT2017", "ngEHT")]

    one, two = _run_arrays(jobs("one"), 1, False), _run_arrays(jobs("two"), 2, False)
    for a, b in zip(one, two):  # the same fits, in the order given
        for key in ("chi2_cphase", "chi2_logcamp", "total_flux", "total_flux_std", "chi2_samples"):
            assert a[key] == b[key], key
    assert one[0]["chi2_cphase"] != one[1]["chi2_cphase"]  # two arrays, two fits
    with pytest.raises(InterferoError, match="--jobs must be >= 1"):
        array_study(str(DEMO_TRUTH), ["EHT2017"], tmp_path / "three", TINY, progress=False, workers=0)
