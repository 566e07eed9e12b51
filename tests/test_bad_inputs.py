"""The bad-input catalogue: every subcommand, every kind of bad input, one line on stderr and exit 2.

Each case builds its inputs in a fresh folder, runs ``interfero`` in this process and asserts: exit
status 2, exactly one line on stderr, no traceback, and no file created or changed in the folder (the
folder's contents are compared before and after). Every refusal must come before any heavy work, so
the whole catalogue runs in seconds; a case that slips through the checks would run its job (and
fail here for writing outputs).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from interfero.datafiles import data_path
from interfero.io import ImageGeometry, write_fits_image
from posterior.cli import main
from priors.checkpoint import file_sha256

DEMO = str(data_path("demo/eht2017_crescent_grf.uvfits"))
WEIGHTS = Path(data_path("weights"))


# ---- inputs each case can ask for ------------------------------------------------------------------------------
def _prior(d: Path, edit=None, weights=None, name: str = "p") -> str:
    """A copy of the shipped faces16 prior pair in ``d`` (``edit`` changes its record, ``weights`` its tensors)."""
    record = json.loads((WEIGHTS / "faces16.json").read_text())
    if edit:
        edit(record)
    (d / f"{name}.json").write_text(json.dumps(record))
    if weights is None:
        shutil.copy(WEIGHTS / "faces16.safetensors", d / f"{name}.safetensors")
    else:
        save_file(weights(load_file(str(WEIGHTS / "faces16.safetensors"))), str(d / f"{name}.safetensors"))
    return str(d / name)


def _bh_prior(d: Path, edit=None, weights=None) -> str:
    """The same with the default black-hole prior."""
    record = json.loads((WEIGHTS / "bh32lnflux.json").read_text())
    if edit:
        edit(record)
    (d / "bh.json").write_text(json.dumps(record))
    if weights is None:
        shutil.copy(WEIGHTS / "bh32lnflux.safetensors", d / "bh.safetensors")
    else:
        save_file(weights(load_file(str(WEIGHTS / "bh32lnflux.safetensors"))), str(d / "bh.safetensors"))
    return str(d / "bh")


def _nan_weights(w: dict) -> dict:
    return {k: v * float("nan") for k, v in w.items()}


def _dataset(d: Path, make=None) -> str:
    path = d / "data.h5"
    with h5py.File(path, "w") as f:
        if make is None:
            f.create_dataset("images", data=np.random.default_rng(0).random((16, 1, 16, 16), dtype=np.float32))
            f.attrs["generator"] = "{}"
        else:
            make(f)
    return str(path)


def _image(d: Path, npix: int = 32, fov: float = 160.0) -> str:
    g = ImageGeometry(npix, fov)
    y, x = np.mgrid[:npix, :npix] - (npix - 1) / 2
    img = np.exp(-(x**2 + y**2) / (2 * (npix / 8) ** 2))
    write_fits_image(img / img.sum() * 1.5, g, d / "img.fits")
    return str(d / "img.fits")


def _file(d: Path, name: str = "afile", text: str = "x") -> str:
    (d / name).write_text(text)
    return str(d / name)


def _folder(d: Path, name: str = "adir", files: tuple[str, ...] = ()) -> str:
    (d / name).mkdir()
    for f in files:
        (d / name / f).write_text("earlier run")
    return str(d / name)


def _uvfits(d: Path, edit) -> str:
    from astropy.io import fits

    with fits.open(DEMO) as hdul:
        edit(hdul)
        hdul.writeto(d / "obs.uvfits")
    return str(d / "obs.uvfits")


def _nan_sigmas(hdul) -> None:
    data = hdul[0].data.data
    data[..., 2] = np.nan  # the weights column of every visibility


_BASE_RUN: list[Path] = []


def _finished_run() -> Path:
    """The folder of a 4-step DPI reconstruction of the demo, made once per test process. So short a fit is
    refused (its total flux is off) but keeps its checkpoints, which is all the resume cases need."""
    if not _BASE_RUN:
        base = Path(tempfile.mkdtemp(prefix="interfero-bad-inputs-")) / "run"
        main([*REC[:2], "--steps", "4", "--samples", "2", "--ensemble", "1", "--quiet", "--out", str(base)])
        assert (base / "dpi-checkpoint.json").is_file()
        _BASE_RUN.append(base)
    return _BASE_RUN[0]


def _dpi_checkpoint(d: Path, edit=None, tensors=None) -> str:
    """A copy of a finished DPI run whose checkpoint record (``edit``) or tensor file (``tensors``) is changed."""
    out = d / "run"
    shutil.copytree(_finished_run(), out)
    jpath = out / "dpi-checkpoint.json"
    record = json.loads(jpath.read_text())
    if tensors is not None:
        tpath = out / record["file"]
        tensors(tpath)
        record["sha256"] = file_sha256(tpath)
    if edit is not None:
        edit(record)
    jpath.write_text(json.dumps(record))
    return str(out)


def _rng_of_wrong_size(path: Path) -> None:
    t = load_file(str(path))
    t["rng"] = t["rng"][:100]
    save_file(t, str(path))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _training_run(d: Path, record: dict) -> str:
    out = d / "run"
    out.mkdir()
    (out / "checkpoint.json").write_text(json.dumps(record))
    return str(out)


# ---- the catalogue: (category, id, argv builder) -----------------------------------------------------------------
SIM = ["simulate", "--model", "ring", "--npix", "16"]
MKD = ["make-dataset", "blackholes", "--n", "4", "--npix", "16"]
REC = ["reconstruct", DEMO, "--steps", "2", "--samples", "2", "--ensemble", "1", "--quiet"]
RST = ["restore", "--simulate", "--quiet", "--method", "pnp-admm"]


def _train(d, *extra):
    return ["train-prior", "--data", _dataset(d), "--out", str(d / "run"), "--steps", "2", "--width", "8",
            "--no-progress", *extra]


CASES = [
    # output paths
    ("paths", "simulate-out-proc", lambda d: [*SIM, "--out", "/proc/interfero-x"]),
    ("paths", "simulate-out-under-a-file", lambda d: [*SIM, "--out", _file(d) + "/sub"]),
    ("paths", "simulate-out-empty", lambda d: [*SIM, "--out", ""]),
    ("paths", "inspect-json-is-folder", lambda d: ["inspect", DEMO, "--json", _folder(d)]),
    ("paths", "inspect-json-proc", lambda d: ["inspect", DEMO, "--json", "/proc/interfero-x.json"]),
    ("paths", "inspect-out-is-file", lambda d: ["inspect", DEMO, "--out", _file(d)]),
    ("paths", "make-dataset-out-proc", lambda d: [*MKD, "--out", "/proc/interfero-x.h5"]),
    ("paths", "make-dataset-out-is-folder", lambda d: [*MKD, "--out", _folder(d)]),
    ("paths", "make-dataset-out-no-folder", lambda d: [*MKD, "--out", str(d / "nowhere" / "x.h5")]),
    ("paths", "train-prior-out-is-file", lambda d: [*_train(d)[:4], _file(d), *_train(d)[5:]]),
    ("paths", "train-prior-out-proc", lambda d: [*_train(d)[:4], "/proc/interfero-x", *_train(d)[5:]]),
    ("paths", "sample-prior-out-under-a-file",
     lambda d: ["sample-prior", "--prior", "faces16", "--n", "2", "--out", _file(d) + "/sub"]),
    ("paths", "prior-logp-json-is-folder",
     lambda d: ["prior-logp", _image(d), "--json", _folder(d)]),
    ("paths", "prior-logp-json-proc",
     lambda d: ["prior-logp", _image(d), "--json", "/proc/interfero-x.json"]),
    ("paths", "reconstruct-out-empty", lambda d: [*REC, "--out", ""]),
    ("paths", "reconstruct-out-proc", lambda d: [*REC, "--out", "/proc/interfero-x"]),
    ("paths", "restore-out-is-file", lambda d: [*RST, _image(d), "--out", _file(d)]),
    ("paths", "array-study-out-proc",
     lambda d: ["array-study", "--truth", _image(d), "--arrays", "EHT2017", "--out", "/proc/interfero-x"]),
    ("paths", "array-study-json-is-folder",
     lambda d: ["array-study", "--truth", _image(d), "--arrays", "EHT2017", "--out", str(d / "o"),
                "--json", _folder(d)]),
    # sizes beyond memory
    ("sizes", "simulate-npix-100000", lambda d: [*SIM[:3], "--npix", "100000", "--out", str(d / "o")]),
    ("sizes", "simulate-tadv-1e-9", lambda d: [*SIM, "--tadv", "1e-9", "--out", str(d / "o")]),
    ("sizes", "inspect-npix-100000", lambda d: ["inspect", DEMO, "--npix", "100000", "--out", str(d / "o")]),
    ("sizes", "reconstruct-tv-npix-100000",
     lambda d: [*REC, "--prior", "tv", "--npix", "100000", "--out", str(d / "o")]),
    ("sizes", "make-dataset-npix-100000", lambda d: [*MKD[:4], "--npix", "100000", "--out", str(d / "x.h5")]),
    ("sizes", "make-dataset-n-1e9", lambda d: [*MKD[:2], "--n", "1000000000", "--out", str(d / "x.h5")]),
    ("sizes", "make-dataset-patches-npix-5000",
     lambda d: ["make-dataset", "patches", "--n", "4", "--npix", "5000", "--out", str(d / "x.h5")]),
    ("sizes", "sample-prior-n-1e8",
     lambda d: ["sample-prior", "--prior", "faces16", "--n", "100000000", "--out", str(d / "o")]),
    ("sizes", "train-prior-batch-1e8", lambda d: _train(d, "--batch-size", "100000000")),
    ("sizes", "reconstruct-batch-1e9", lambda d: [*REC, "--batch", "1000000000", "--out", str(d / "o")]),
    ("sizes", "reconstruct-elbo-draws-1e9", lambda d: [*REC, "--elbo-draws", "1000000000", "--out", str(d / "o")]),
    ("sizes", "reconstruct-blocks-1e5", lambda d: [*REC, "--blocks", "100000", "--out", str(d / "o")]),
    ("sizes", "reconstruct-dense-glow-256px",
     lambda d: [*REC[:-3], "--npix", "256", "--flow", "glow", "--flow-layout", "dense", "--out", str(d / "o")]),
    ("sizes", "restore-opt-samples-1e9", lambda d: [*RST[:3], "--method", "sdedit", "--opt", "n_samples=1000000000",
                                                     _image(d), "--out", str(d / "o")]),
    ("sizes", "train-prior-num-res-blocks-1e6", lambda d: _train(d, "--num-res-blocks", "1000000")),
    ("sizes", "reconstruct-samples-1e9", lambda d: [*REC[:-3], "--samples", "1000000000", "--out", str(d / "o")]),
    # numbers: non-finite, negative, out of range
    ("numbers", "simulate-tstart-nan", lambda d: [*SIM, "--tstart", "nan", "--out", str(d / "o")]),
    ("numbers", "simulate-mjd-99999999", lambda d: [*SIM, "--mjd", "99999999", "--out", str(d / "o")]),
    ("numbers", "simulate-gain-amp-nan", lambda d: [*SIM, "--gain-amp", "nan", "--out", str(d / "o")]),
    ("numbers", "simulate-systematic-negative", lambda d: [*SIM, "--systematic", "-0.5", "--out", str(d / "o")]),
    ("numbers", "simulate-seed-negative", lambda d: [*SIM, "--seed", "-1", "--out", str(d / "o")]),
    ("numbers", "simulate-gain-phase-negative", lambda d: [*SIM, "--gain-phase", "-10", "--out", str(d / "o")]),
    ("numbers", "simulate-dec-100", lambda d: [*SIM, "--dec", "100", "--out", str(d / "o")]),
    ("numbers", "make-dataset-seed-negative", lambda d: [*MKD, "--seed", "-1", "--out", str(d / "x.h5")]),
    ("numbers", "make-dataset-fov-inf", lambda d: [*MKD, "--fov", "inf", "--out", str(d / "x.h5")]),
    ("numbers", "make-dataset-fov-1e-300", lambda d: [*MKD, "--fov", "1e-300", "--out", str(d / "x.h5")]),
    ("numbers", "make-dataset-npix-1", lambda d: [*MKD[:4], "--npix", "1", "--out", str(d / "x.h5")]),
    ("numbers", "train-prior-width-1", lambda d: _train(d, "--width", "1")),
    ("numbers", "train-prior-sample-every-negative", lambda d: _train(d, "--sample-every", "-1")),
    ("numbers", "train-prior-warmup-negative", lambda d: _train(d, "--warmup", "-5")),
    ("numbers", "train-prior-lr-inf", lambda d: _train(d, "--lr", "inf")),
    ("numbers", "train-prior-likelihood-fraction-2", lambda d: _train(d, "--likelihood-fraction", "2")),
    ("numbers", "reconstruct-steps-negative", lambda d: [*REC[:2], "--steps", "-5", "--out", str(d / "o")]),
    ("numbers", "reconstruct-samples-zero", lambda d: [*REC[:4], "--samples", "0", "--out", str(d / "o")]),
    ("numbers", "reconstruct-fov-inf", lambda d: [*REC, "--fov", "inf", "--out", str(d / "o")]),
    ("numbers", "reconstruct-device-unknown", lambda d: [*REC, "--device", "tpu", "--out", str(d / "o")]),
    ("numbers", "reconstruct-device-cuda-99", lambda d: [*REC, "--device", "cuda:99", "--out", str(d / "o")]),
    ("numbers", "array-study-device-cuda-99",
     lambda d: ["array-study", "--truth", _image(d), "--arrays", "EHT2017", "--device", "cuda:99", "--out",
                str(d / "o")]),
    ("numbers", "reconstruct-seed-negative", lambda d: [*REC, "--seed", "-3", "--out", str(d / "o")]),
    ("numbers", "restore-missing-1.5", lambda d: [*RST, _image(d), "--task", "random-inpaint", "--missing", "1.5",
                                                   "--out", str(d / "o")]),
    ("numbers", "restore-noise-negative", lambda d: [*RST, _image(d), "--noise", "-1", "--out", str(d / "o")]),
    ("numbers", "restore-opt-negative-step", lambda d: [*RST[:3], "--method", "dps", "--opt", "zeta=-1", _image(d),
                                                         "--out", str(d / "o")]),
    ("numbers", "restore-opt-t0-outside", lambda d: [*RST[:3], "--method", "sdedit", "--opt", "t0=2", _image(d),
                                                      "--out", str(d / "o")]),
    # data products and observations
    ("data", "reconstruct-data-repeated", lambda d: [*REC, "--data", "cphase,cphase", "--out", str(d / "o")]),
    ("data", "reconstruct-data-unknown", lambda d: [*REC, "--data", "cphase,bispectrum", "--out", str(d / "o")]),
    ("data", "reconstruct-uvfits-text", lambda d: [*REC[:1], _file(d, "x.uvfits", "SIMPLE"), *REC[2:],
                                                   "--out", str(d / "o")]),
    ("data", "reconstruct-uvfits-empty", lambda d: [*REC[:1], _file(d, "x.uvfits", ""), *REC[2:],
                                                    "--out", str(d / "o")]),
    ("data", "inspect-uvfits-missing", lambda d: ["inspect", str(d / "none.uvfits")]),
    ("data", "reconstruct-uvfits-is-a-folder", lambda d: [*REC[:1], _folder(d), *REC[2:], "--out", str(d / "o")]),
    ("data", "reconstruct-uvfits-nan-sigmas", lambda d: [*REC[:1], _uvfits(d, _nan_sigmas), *REC[2:],
                                                         "--out", str(d / "o")]),
    ("data", "simulate-unknown-station", lambda d: [*SIM, "--stations", "ALMA,LMT,NOWHERE", "--out", str(d / "o")]),
    ("data", "simulate-unknown-array", lambda d: [*SIM, "--array", "EHT2099", "--out", str(d / "o")]),
    ("data", "simulate-image-not-fits", lambda d: ["simulate", "--image", _file(d, "x.fits"), "--out", str(d / "o")]),
    ("data", "reconstruct-truth-not-fits", lambda d: [*REC, "--truth", _file(d, "t.fits"), "--out", str(d / "o")]),
    ("data", "reconstruct-unknown-method", lambda d: [*REC, "--method", "magic", "--out", str(d / "o")]),
    ("data", "reconstruct-opt-malformed", lambda d: [*REC, "--method", "dps", "--opt", "zeta", "--out", str(d / "o")]),
    ("data", "restore-image-size-vs-prior", lambda d: [*RST, _image(d, 48), "--out", str(d / "o")]),
    ("data", "restore-unknown-task", lambda d: [*RST, _image(d), "--task", "sharpen", "--out", str(d / "o")]),
    # prior files
    ("prior-files", "reconstruct-prior-width-negative",
     lambda d: [*REC, "--prior", _bh_prior(d, lambda r: r["network"].update(width=-4)), "--out", str(d / "o")]),
    ("prior-files", "reconstruct-prior-image-size-string",
     lambda d: [*REC, "--prior", _bh_prior(d, lambda r: r.update(image_size="big")), "--out", str(d / "o")]),
    ("prior-files", "reconstruct-prior-fov-string",
     lambda d: [*REC, "--prior", _bh_prior(d, lambda r: r.update(fov_uas="wide")), "--out", str(d / "o")]),
    ("prior-files", "reconstruct-prior-transform-lacks-keys",
     lambda d: [*REC, "--prior", _bh_prior(d, lambda r: r.update(transform={})), "--out", str(d / "o")]),
    ("prior-files", "sample-prior-transform-lacks-keys",
     lambda d: ["sample-prior", "--prior", _prior(d, lambda r: r.update(transform={"scale": 1.0})), "--n", "2",
                "--out", str(d / "o")]),
    ("prior-files", "sample-prior-scale-zero",
     lambda d: ["sample-prior", "--prior", _prior(d, lambda r: r["transform"].update(scale=0.0)), "--n", "2",
                "--out", str(d / "o")]),
    ("prior-files", "sample-prior-nan-weights",
     lambda d: ["sample-prior", "--prior", _prior(d, weights=_nan_weights), "--n", "2", "--out", str(d / "o")]),
    ("prior-files", "prior-logp-nan-weights",
     lambda d: ["prior-logp", _image(d), "--prior", _bh_prior(d, weights=_nan_weights)]),
    ("prior-files", "sample-prior-weights-float16",
     lambda d: ["sample-prior", "--prior", _prior(d, weights=lambda w: {k: v.half() for k, v in w.items()}),
                "--n", "2", "--out", str(d / "o")]),
    ("prior-files", "sample-prior-weights-missing",
     lambda d: ["sample-prior", "--prior", _prior(d, weights=lambda w: dict(list(w.items())[1:])), "--n", "2",
                "--out", str(d / "o")]),
    ("prior-files", "sample-prior-record-not-json",
     lambda d: ["sample-prior", "--prior", _prior(d, lambda r: r.clear()), "--n", "2", "--out", str(d / "o")]),
    ("prior-files", "sample-prior-sde-unknown",
     lambda d: ["sample-prior", "--prior", _prior(d, lambda r: r["sde"].update(name="xx")), "--n", "2",
                "--out", str(d / "o")]),
    # checkpoints
    ("checkpoints", "train-prior-resume-empty-record", lambda d: [*_train(d, "--resume")[:4], _training_run(d, {}),
                                                                  *_train(d, "--resume")[5:]]),
    ("checkpoints", "train-prior-resume-record-not-dict",
     lambda d: [*_train(d, "--resume")[:4], _training_run(d, [1, 2]), *_train(d, "--resume")[5:]]),
    ("checkpoints", "reconstruct-resume-no-optimizer",
     lambda d: [*REC[:2], "--steps", "4", *REC[4:], "--resume", "--out",
                _dpi_checkpoint(d, lambda r: r.pop("optimizer"))]),
    ("checkpoints", "reconstruct-resume-step-string",
     lambda d: [*REC[:2], "--steps", "4", *REC[4:], "--resume", "--out",
                _dpi_checkpoint(d, lambda r: r.update(step="ten"))]),
    ("checkpoints", "reconstruct-resume-fewer-steps",
     lambda d: [*REC, "--resume", "--out", _dpi_checkpoint(d)]),
    ("checkpoints", "reconstruct-resume-rng-wrong-size",
     lambda d: [*REC[:2], "--steps", "4", *REC[4:], "--resume", "--out",
                _dpi_checkpoint(d, tensors=_rng_of_wrong_size)]),
    ("checkpoints", "reconstruct-resume-tensors-not-the-recorded-ones",
     lambda d: [*REC[:2], "--steps", "4", *REC[4:], "--resume", "--out",
                _dpi_checkpoint(d, lambda r: r.update(sha256="0" * 64))]),
    ("checkpoints", "reconstruct-resume-tensors-truncated",
     lambda d: [*REC[:2], "--steps", "4", *REC[4:], "--resume", "--out", _dpi_checkpoint(d, tensors=_truncate)]),
    ("checkpoints", "reconstruct-resume-and-overwrite",
     lambda d: [*REC, "--resume", "--overwrite", "--out", _dpi_checkpoint(d)]),
    # datasets
    ("datasets", "train-images-group", lambda d: ["train-prior", "--data", _dataset(d, lambda f: f.create_group(
        "images")), "--out", str(d / "run")]),
    ("datasets", "train-images-strings", lambda d: ["train-prior", "--data", _dataset(d, lambda f: f.create_dataset(
        "images", data=np.array([b"a", b"b"]))), "--out", str(d / "run")]),
    ("datasets", "train-images-compound", lambda d: ["train-prior", "--data", _dataset(d, lambda f: f.create_dataset(
        "images", data=np.zeros(4, dtype=[("a", "f4"), ("b", "i4")]))), "--out", str(d / "run")]),
    ("datasets", "train-attrs-not-json", lambda d: ["train-prior", "--data", _dataset(d, lambda f: (
        f.create_dataset("images", data=np.ones((8, 1, 16, 16), np.float32)),
        f.attrs.__setitem__("generator", "{not json"))), "--out", str(d / "run")]),
    ("datasets", "train-images-2x2", lambda d: ["train-prior", "--data", _dataset(d, lambda f: f.create_dataset(
        "images", data=np.random.default_rng(0).random((8, 1, 2, 2), np.float32))), "--out", str(d / "run")]),
    ("datasets", "train-images-rank-3", lambda d: ["train-prior", "--data", _dataset(d, lambda f: f.create_dataset(
        "images", data=np.ones((8, 16, 16), np.float32))), "--out", str(d / "run")]),
    ("datasets", "train-images-nan", lambda d: ["train-prior", "--data", _dataset(d, lambda f: f.create_dataset(
        "images", data=np.full((8, 1, 16, 16), np.nan, np.float32))), "--out", str(d / "run")]),
    # reruns into a folder with earlier results
    ("reruns", "simulate-into-earlier-results",
     lambda d: [*SIM, "--out", _folder(d, "o", ("obs.uvfits", "summary.json"))]),
    ("reruns", "sample-prior-into-earlier-results",
     lambda d: ["sample-prior", "--prior", "faces16", "--n", "2", "--out", _folder(d, "o", ("samples.h5",))]),
    ("reruns", "train-prior-into-earlier-run",
     lambda d: [*_train(d)[:4], _folder(d, "run", ("checkpoint.json", "prior.json")), *_train(d)[5:]]),
    ("reruns", "reconstruct-into-earlier-results",
     lambda d: [*REC, "--out", _folder(d, "o", ("mean.fits", "metrics.json"))]),
    ("reruns", "restore-into-earlier-results",
     lambda d: [*RST, _image(d), "--out", _folder(d, "o", ("mean.fits", "metrics.json"))]),
    ("reruns", "make-dataset-over-existing-file", lambda d: [*MKD, "--out", _file(d, "x.h5")]),
    ("reruns", "array-study-into-earlier-results",
     lambda d: ["array-study", "--truth", _image(d), "--arrays", "EHT2017", "--out",
                _folder(d, "o", ("arrays.json",))]),
]


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


@pytest.mark.parametrize("category,case,argv", CASES, ids=[c[1] for c in CASES])
def test_bad_input(category, case, argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = argv(tmp_path)
    before = _snapshot(tmp_path)
    capsys.readouterr()  # what building the inputs printed
    try:
        status = main(args)
    except SystemExit as stop:  # argument-parser errors
        status = stop.code
    err = capsys.readouterr().err.strip()
    assert status == 2, f"exit status {status}; stderr: {err[-500:]}"
    assert err and "\n" not in err and "Traceback" not in err, err
    assert _snapshot(tmp_path) == before, "files were written or changed"


def test_the_catalogue_covers_every_subcommand_and_category(tmp_path):
    commands = set()
    for _, case, argv in CASES:
        (tmp_path / case).mkdir()
        commands.add(argv(tmp_path / case)[0])
    assert len(CASES) >= 60
    assert commands == {"simulate", "inspect", "reconstruct", "restore", "make-dataset", "train-prior",
                        "sample-prior", "prior-logp", "array-study"}
    assert {c[0] for c in CASES} == {"paths", "sizes", "numbers", "data", "prior-files", "checkpoints", "datasets",
                                     "reruns"}


def test_memory_limit_and_numeric_types(monkeypatch):
    """The memory check reads the limit from the environment when set, and the numeric types refuse
    non-finite and out-of-range values with the bound in the message."""
    import argparse

    from interfero.errors import InterferoError
    from interfero.validation import check_memory, count, number, positive

    monkeypatch.setenv("INTERFERO_MEMORY_LIMIT_GB", "1")
    check_memory(0.5 * 2**30, "half a GiB")
    with pytest.raises(InterferoError, match="about 2 GiB of memory, more than the 819 MiB"):
        check_memory(2 * 2**30, "two GiB")
    assert count(2)("3") == 3 and positive()("1e-3") == 1e-3
    for parse, text, match in [(count(2), "1", ">= 2"), (positive(), "0", "> 0"), (positive(), "nan", "finite"),
                               (number(float, 0, 1, open_max=True), "1", "< 1"), (count(), "2.5", "integer")]:
        with pytest.raises(argparse.ArgumentTypeError, match=match):
            parse(text)
