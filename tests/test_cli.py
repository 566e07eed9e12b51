"""The command line: outputs of simulate/inspect, and bad input -> one line, exit 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from interfero.io import ImageGeometry, read_uvfits, write_fits_image, write_uvfits
from interfero.models import render
from posterior.cli import main

from .conftest import shared_path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_simulate_and_inspect(tmp_path, capsys):
    out = tmp_path / "sim"
    code, _ = run(capsys, "simulate", "--model", "ring", "--npix", "32", "--tstop", "12", "--tadv", "1800",
                  "--out", out)
    assert code == 0
    for f in ["obs.uvfits", "truth.fits", "uv_coverage.png", "truth.png", "dirty_image.png", "summary.json"]:
        assert (out / f).stat().st_size > 0
    code, cap = run(capsys, "inspect", out / "obs.uvfits", "--json", tmp_path / "i.json", "--out", tmp_path / "ins")
    assert code == 0 and "closure phases" in cap.out
    s = json.loads((tmp_path / "i.json").read_text())
    obs = read_uvfits(out / "obs.uvfits")
    assert s["n_vis"] == obs.n_vis and s["n_cphase"] == obs.closures.n_cphase
    for key in ["n_stations", "n_baselines", "n_times", "n_vis", "n_cphase", "n_logcamp"]:
        assert isinstance(s[key], int) and s[key] > 0
    assert (tmp_path / "ins" / "uv_coverage.png").exists() and (tmp_path / "ins" / "dirty_image.png").exists()


def test_inspect_counts_match_ehtim(eh, capsys, tmp_path):
    path = shared_path("observations", "grmhd_sgra_2017", "obs.uvfits")
    code, _ = run(capsys, "inspect", path, "--json", tmp_path / "s.json")
    s = json.loads((tmp_path / "s.json").read_text())
    from interfero.io import quiet

    with quiet():
        o = eh.obsdata.load_uvfits(str(path))
        ncp = len(o.c_phases(count="min"))
        nlc = len(o.c_amplitudes(ctype="logcamp", count="min"))
    assert code == 0
    assert (s["n_vis"], s["n_stations"], s["n_baselines"], s["n_times"]) == (938, 9, 29, 100)
    assert (s["n_cphase"], s["n_logcamp"]) == (ncp, nlc)


def _bad_weights(folder, name, value):
    src = shared_path("observations", "ehtim_sample", "obs.uvfits")
    with fits.open(src) as h:
        h[0].data["DATA"][:3, ..., 2] = value
        h.writeto(folder / name)
    return folder / name


def _bad_inputs(tmp_path):
    text = tmp_path / "notes.uvfits"
    text.write_text("this is not a uvfits file\n")
    real = shared_path("observations", "ehtim_sample", "obs.uvfits").read_bytes()
    trunc = tmp_path / "trunc.uvfits"
    trunc.write_bytes(real[: len(real) // 2])
    empty = tmp_path / "empty.uvfits"
    empty.write_bytes(b"")
    rect = tmp_path / "rect.fits"
    fits.PrimaryHDU(np.ones((16, 8))).writeto(rect)
    badarr = tmp_path / "arr.csv"
    badarr.write_text("name,x_m,y_m,z_m,colour\nA,1,2,3,red\n")
    return {
        "missing file": (["inspect", tmp_path / "nope.uvfits"], "no such file"),
        "not uvfits": (["inspect", text], "not a FITS"),
        "empty uvfits": (["inspect", empty], "empty"),
        "truncated uvfits": (["inspect", trunc], "not a readable uvfits"),
        "NaN sigma": (["inspect", _bad_weights(tmp_path, "nan_sigma.uvfits", np.nan)], "NaN"),
        "zero sigma": (["inspect", _bad_weights(tmp_path, "zero_sigma.uvfits", np.inf)], "zero sigma"),
        "non-square image": (["simulate", "--image", rect], "not square"),
        "unknown station": (["simulate", "--model", "ring", "--stations", "ALMA,XYZ"], "unknown station 'XYZ'"),
        "malformed array": (["simulate", "--model", "ring", "--array", badarr], "unknown column"),
        "unknown array": (["simulate", "--model", "ring", "--array", "EHT1999"], "unknown array"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing file", "not uvfits", "empty uvfits", "truncated uvfits", "NaN sigma", "zero sigma",
     "non-square image", "unknown station", "malformed array", "unknown array"],
)
def test_bad_input_one_line_exit_2_no_output(tmp_path, capsys, case):
    work = tmp_path / "w"
    work.mkdir()
    argv, match = _bad_inputs(work)[case]
    out = tmp_path / "out"
    if argv[0] == "simulate":
        argv = argv + ["--out", out]
    else:
        argv = argv + ["--json", out / "s.json", "--out", out]
    code, cap = run(capsys, *argv)
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], cap.err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["--fov", "0"], ["--fov", "-5"], ["--tint", "0"]])
def test_nonpositive_settings_rejected(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(["simulate", "--model", "ring", "--out", str(tmp_path / "o"), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be > 0" in err[0]
    assert not (tmp_path / "o").exists()


def test_entry_point_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "posterior.cli", "inspect", str(tmp_path / "x.uvfits")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"interfero inspect: error: {tmp_path / 'x.uvfits'}: no such file"


def test_two_station_observation_has_no_closure_phases(tmp_path):
    from interfero.errors import InterferoError
    from interfero.operators import InterferometryOperator
    from interfero.simulate import simulate
    from interfero.uvcoverage import ObservingSetup

    geom = ImageGeometry(16, 160.0)
    obs = simulate(render("ring", geom), geom, "EHT2017", ObservingSetup(tadv=3600.0))
    two = obs.keep_stations(["ALMA", "LMT"])
    write_uvfits(two, tmp_path / "two.uvfits")
    back = read_uvfits(tmp_path / "two.uvfits")
    assert back.closures.n_cphase == 0
    with pytest.raises(InterferoError, match="no closure phases"):
        InterferometryOperator(back, geom, products=("cphase",))
    with pytest.raises(InterferoError, match="no log closure amplitudes"):
        InterferometryOperator(obs.keep_stations(["ALMA", "LMT", "PV"]), geom, products=("logcamp",))


def test_image_size_must_match_operator(small_obs):
    import torch

    from interfero.errors import InterferoError
    from interfero.operators import InterferometryOperator

    op = InterferometryOperator(small_obs, ImageGeometry(16, 160.0))
    with pytest.raises(InterferoError, match="does not match"):
        op(torch.zeros(1, 1, 32, 32, dtype=torch.float64))
    with pytest.raises(InterferoError, match="field of view"):
        ImageGeometry(16, 0.0)
    with pytest.raises(InterferoError, match="field of view"):
        ImageGeometry(16, -1.0)


def test_fits_image_roundtrip_atomic(tmp_path):
    geom = ImageGeometry(8, 100.0)
    write_fits_image(render("gaussian", geom, width=30.0), geom, tmp_path / "a.fits")
    assert [p.name for p in tmp_path.iterdir()] == ["a.fits"]  # no temp file left
