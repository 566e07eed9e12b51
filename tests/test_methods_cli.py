"""``interfero reconstruct --method`` and ``interfero restore``: every method through the one seam, writing the
outputs of ``reconstruct``; bad input -> one line, exit 2, nothing written. Shipped demo data only."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from interfero.io import ImageGeometry, read_fits_image, write_fits_image
from interfero.regrid import regrid
from posterior.cli import main

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
OBS = DEMO / "eht2017_crescent_grf.uvfits"
FAST = {
    "dps": ["--opt", "steps=4"],
    "ald": ["--opt", "levels=4", "--opt", "steps_per_level=1"],
    "sdedit": ["--opt", "steps=4"],
    "pnp-admm": ["--opt", "iterations=2", "--opt", "grad_steps=2"],
    "pnp-dm": ["--opt", "anneal=2", "--opt", "sweeps=1", "--opt", "prior_steps=2", "--opt", "langevin_steps=2"],
    "map": ["--opt", "iterations=3"],
    "dpi": ["--opt", "steps=2", "--opt", "batch=2", "--opt", "n_samples=4", "--opt", "blocks=1",
            "--opt", "hidden=8"],
}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


@pytest.fixture(scope="module")
def clean_image(tmp_path_factory):
    """The demo truth on the default prior's 32x32, 160 uas grid (FITS, Jy/pixel)."""
    truth, geom = read_fits_image(DEMO / "crescent_grf_64.fits")
    g = ImageGeometry(32, 160.0)
    path = tmp_path_factory.mktemp("img") / "clean.fits"
    write_fits_image(regrid(truth, geom, g), g, path)
    return path


@pytest.mark.parametrize("method", ["dps", "sdedit", "pnp-dm", "map"])
def test_reconstruct_with_a_baseline_method(tmp_path, capsys, method):
    out = tmp_path / method
    code, cap = run(capsys, "reconstruct", OBS, "--method", method, *FAST[method], "--samples", "3", "--quiet",
                    "--threads", "2", "--flux-sigma", "0.5", "--max-chi2", "1e30",
                    "--truth", DEMO / "crescent_grf_64.fits", "--out", out)
    assert code == 0, cap.err
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == method and "method_settings" in m and np.isfinite(m["nxcorr"])
    assert m["point_estimate"] == (method == "map")
    with h5py.File(out / "samples.h5") as f:
        assert f["samples"].shape[0] == (1 if method == "map" else 3)
        assert json.loads(f.attrs["diagnostics"])["method"] == method
    for name in ("mean.fits", "std.fits", "report.png"):
        assert (out / name).is_file()


@pytest.mark.parametrize("method", list(FAST))
@pytest.mark.parametrize("task", ["deblur", "random-inpaint"])
def test_restore_simulated_with_every_method(tmp_path, capsys, clean_image, method, task):
    out = tmp_path / f"{task}-{method}"
    extra = [] if method in ("pnp-admm", "map", "dpi") else ["--opt", "n_samples=2", "--opt", "batch=2"]
    code, cap = run(capsys, "restore", clean_image, "--simulate", "--task", task, "--method", method, *FAST[method],
                    *extra, "--quiet", "--threads", "2", "--out", out)
    assert code == 0, cap.err
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == task and m["method"] == method
    for key in ("psnr", "ssim", "nxcorr"):
        assert np.isfinite(m[key]), key
    if m["point_estimate"]:  # no intervals, so no coverage to score
        assert "truth_coverage_95" not in m
    else:
        assert 0 <= m["truth_coverage_95"] <= 1
    for name in ("samples.h5", "mean.fits", "std.fits", "measurement.fits", "report.png"):
        assert (out / name).is_file(), name


def test_restore_of_a_degraded_image_with_a_truth(tmp_path, capsys, clean_image):
    """A degraded NPY image restored by MAP scores better than the degraded image itself (a real test)."""
    import torch

    from posterior.metrics import psnr
    from posterior.restore import RestoreSettings, task_operator

    clean, _ = read_fits_image(clean_image)
    op = task_operator(RestoreSettings(task="denoise"), (1, 32, 32), 0.1 * clean.max())
    noisy = op.sample(torch.tensor(clean, dtype=torch.float32)[None, None], torch.Generator().manual_seed(0))
    np.save(tmp_path / "noisy.npy", noisy[0, 0].numpy())
    np.save(tmp_path / "clean.npy", clean)
    out = tmp_path / "pnp"
    code, cap = run(capsys, "restore", tmp_path / "noisy.npy", "--truth", tmp_path / "clean.npy", "--task", "denoise",
                    "--method", "pnp-admm", "--quiet", "--out", out)
    assert code == 0, cap.err
    m = json.loads((out / "metrics.json").read_text())
    assert m["psnr"] > psnr(noisy[0, 0].double().numpy(), clean) + 3


@pytest.mark.parametrize(("argv", "message"), [
    (["--method", "nope"], "invalid choice"),
    (["--task", "nope"], "invalid choice"),
    (["--method", "dps", "--opt", "zeta=-1"], "zeta must be > 0"),
    (["--method", "sdedit", "--opt", "t0=2"], "t0 must be in"),
    (["--method", "dps", "--opt", "zeta"], "--opt expects NAME=VALUE"),
    (["--method", "dps", "--opt", "bogus=1"], "unknown setting 'bogus'"),
    (["--noise", "0%"], "--noise must give a noise level > 0"),
    (["--noise", "abc"], "--noise expects a number"),
    (["--missing", "1.5"], "--missing must be a fraction"),
])
def test_restore_bad_settings_are_one_line_errors(tmp_path, capsys, clean_image, argv, message):
    out = tmp_path / "bad"
    with pytest.raises(SystemExit) if "invalid choice" in message else _nothing():
        code, cap = run(capsys, "restore", clean_image, "--simulate", *argv, "--quiet", "--out", out)
        assert code == 2
        assert message in cap.err and len(cap.err.strip().splitlines()) == 1, cap.err
    assert not out.exists()


def test_restore_bad_images_are_one_line_errors(tmp_path, capsys):
    np.save(tmp_path / "small.npy", np.ones((16, 16)))
    np.save(tmp_path / "nan.npy", np.full((32, 32), np.nan))
    (tmp_path / "x.txt").write_text("x")
    write_fits_image(np.ones((32, 32)), ImageGeometry(32, 200.0), tmp_path / "fov.fits")
    for path, message in ((tmp_path / "small.npy", "the prior bh32lnflux is for 32x32"),
                          (tmp_path / "nan.npy", "NaN"), (tmp_path / "x.txt", "unknown image format"),
                          (tmp_path / "missing.fits", "no such image file"),
                          (tmp_path / "fov.fits", "field of view 200 uas")):
        out = tmp_path / "out"
        code, cap = run(capsys, "restore", path, "--quiet", "--out", out)
        assert code == 2 and message in cap.err and len(cap.err.strip().splitlines()) == 1, cap.err
        assert not out.exists()


def test_a_diverging_sampler_is_refused_and_writes_nothing(tmp_path, capsys, clean_image):
    """ALD with gamma far below its stability bound (lr / gamma^2 < 2) blows up: one line naming the step,
    exit 2, no output folder."""
    out = tmp_path / "ald"
    code, cap = run(capsys, "restore", clean_image, "--simulate", "--task", "denoise", "--method", "ald",
                    "--opt", "gamma=0.01", "--opt", "levels=50", "--opt", "n_samples=2", "--opt", "batch=2", "--quiet",
                    "--out", out)
    assert code == 2 and "ald: non-finite values at step" in cap.err and len(cap.err.strip().splitlines()) == 1
    assert not out.exists()


def test_reconstruct_refuses_a_bad_method_setting_before_writing(tmp_path, capsys):
    out = tmp_path / "rec"
    code, cap = run(capsys, "reconstruct", OBS, "--method", "ald", "--opt", "lr=3", "--quiet", "--out", out)
    assert code == 2 and "lr must be < 1" in cap.err and not out.exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
