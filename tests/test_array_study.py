"""interfero array-study: one truth, several arrays, compared (outputs and bad input; tiny fits)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

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
