"""``interfero reconstruct``: outputs of a tiny run, resume, and bad input -> one line, exit 2, nothing written."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from interfero.errors import InterferoError
from interfero.io import read_fits_image, read_uvfits, write_uvfits
from interfero.preparation import zero_baseline_flux
from interfero.regrid import regrid
from posterior.cli import main
from posterior.metrics import aligned_truth, sample_chi2
from posterior.reconstruct import ReconstructSettings, build_problem, check_total_flux, gaussian_blob

from .conftest import shared_path

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"

# a 2-step fit does not converge: its data fit is absurd, so the chi^2 guard (tested on its own) is lifted
TINY = ["--steps", "2", "--batch", "2", "--samples", "4", "--elbo-draws", "1", "--blocks", "2", "--quiet",
        "--threads", "2", "--max-chi2", "1e30", "--ensemble", "1"]


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argument-parser errors
        code = stop.code
    return code, capsys.readouterr()


@pytest.fixture(scope="module")
def grmhd():
    return shared_path("observations", "grmhd_sgra_2017")


def test_tiny_reconstruction_writes_every_output(grmhd, tmp_path, capsys):
    out = tmp_path / "rec"
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", "--truth", grmhd / "truth.fits", *TINY,
                    "--out", out)
    assert code == 0, cap.err
    m = json.loads((out / "metrics.json").read_text())
    for key in ("nxcorr", "nxcorr_blur10", "nxcorr_blur20", "chi2_cphase", "chi2_logcamp", "total_flux",
                "runtime_s", "steps", "n_samples"):
        assert key in m and np.isfinite(m[key]), key
    assert m["steps"] == 2 and m["n_samples"] == 4
    assert m["warnings"] == [] and "warning" not in cap.err  # 229 GHz, 2.0 Jy: what the prior was trained on
    # ring features of the samples (or why there are none), and what was done to the data before imaging
    assert "diameter_uas" in m["ring"] or "ring extraction failed" in m["ring"]["error"]
    prep = m["preparation"][str(grmhd / "obs.uvfits")]
    assert prep["averaging"] is None and prep["sys_noise"] == 0.0 and m["sys_noise"] == 0.0
    # default identity output, warm-started by a softplus fit as long as the final one (at most 50 steps)
    assert m["warm_start_steps"] == 2 and m["warm_start"] == "flow"
    warm = json.loads((out / "warm-start" / "dpi-checkpoint.json").read_text())
    assert warm["step"] == 2 and warm["flow"]["output"] == "softplus"
    final = json.loads((out / "dpi-checkpoint.json").read_text())["flow"]
    assert final["output"] == "none" and "base_rank" not in final and m["laplace_steps"] == 0
    assert not (out / "diagonal-fit").exists()
    assert 0 <= m["truth_coverage_68"] <= m["truth_coverage_95"] <= 1 and m["coverage_pixels"] > 0
    assert m["truth_rms_error"] > 0 and m["posterior_rms_std"] > 0 and m["truth_median_abs_z"] > 0
    # two steps from the blob: the truth fits its data better than every sample
    assert m["truth_loglik_rank"] == 1.0 and m["truth_loglik_excess"] > 0
    # a 50 uas Gaussian of the right flux already scores 0.91 after 10 uas blurring on this truth
    assert m["init_blob_nxcorr_blur10"] == pytest.approx(0.914, abs=0.01)
    assert m["flux_from"] == "zero-baseline amplitude"
    # the truth sits at the low edge of the default prior's (bh32lnflux's) training draws (priors.ood; measured
    # 1 of 32 below it; under bh32 it is below all of them)
    assert m["truth_prior_percentile"] <= 0.25 and m["prior_reference_elbo"]["n"] == 32
    assert m["truth_prior_elbo"] < m["prior_reference_elbo"]["median"]
    assert m["flux_constraint_jy"] == pytest.approx(2.0, rel=0.1)  # truth: 1.995 Jy
    mean, geom = read_fits_image(out / "mean.fits")
    std, _ = read_fits_image(out / "std.fits")
    assert mean.shape == (32, 32) and geom.fov_uas == pytest.approx(160.0)
    assert np.isfinite(mean).all() and (std > 0).all()
    with h5py.File(out / "samples.h5") as f:
        assert f["samples"].shape == (4, 1, 32, 32)
        # the loss history of both fits, the final one's steps counted after the warm start's
        cols = json.loads(f["history"].attrs["columns"])
        hist = f["history"][...]
        np.testing.assert_array_equal(hist[:, cols.index("step")], [2, 4])  # (logged every 10 steps and last)
        np.testing.assert_array_equal(hist[:, cols.index("stage")], [0, 1])
        np.testing.assert_allclose(f["mean"][...], mean.reshape(1, 32, 32), rtol=1e-6)
        meta = json.loads(f.attrs["metadata"])
        assert meta["operator"]["products"] == ["cphase", "logcamp"] and meta["prior"]["name"] == "bh32lnflux"
        # coverage over the pixels where the posterior mean is at or above 10% of its peak (chosen from the data)
        pm, lo, hi = f["mean"][0], f["lo68"][0], f["hi68"][0]
        chosen = pm >= 0.1 * pm.max()
        truth, truth_geom = read_fits_image(grmhd / "truth.fits")
        aligned, _ = aligned_truth(regrid(truth, truth_geom, geom), m["nxcorr_shift_px"])
        inside = (aligned >= lo) & (aligned <= hi)
        assert m["truth_coverage_mean_region_68"] == pytest.approx(inside[chosen].mean())
        assert m["coverage_mean_region_pixels"] == chosen.sum()
    for png in ("report.png", "uv_coverage.png"):
        assert (out / png).stat().st_size > 10_000


def test_laplace_flow_base_adds_a_correlated_final_fit(grmhd, tmp_path, capsys):
    """``--flow-base laplace``: the diagonal fit moves to ``diagonal-fit/``, a flow with the correlated base
    follows it for ``min(300, --steps)`` steps in ``out`` (the posterior), the history holds the three fits;
    a resume with more steps extends only that last fit; ``--laplace-steps 0`` is the diagonal fit alone."""
    out = tmp_path / "laplace"
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--flow-base", "laplace", "--out", out)
    assert code == 0, cap.err
    final = json.loads((out / "dpi-checkpoint.json").read_text())
    diag = json.loads((out / "diagonal-fit" / "dpi-checkpoint.json").read_text())
    assert final["step"] == 2 and final["flow"]["base_rank"] > 0
    assert diag["step"] == 2 and "base_rank" not in diag["flow"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 2 and m["laplace_steps"] == 2 and m["warm_start_steps"] == 2
    with h5py.File(out / "samples.h5") as f:
        cols = json.loads(f["history"].attrs["columns"])
        hist = f["history"][...]
        np.testing.assert_array_equal(hist[:, cols.index("step")], [2, 4, 6])
        np.testing.assert_array_equal(hist[:, cols.index("stage")], [0, 1, 2])
    longer = [a if a != "2" or i != 1 else "4" for i, a in enumerate(TINY)]
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *longer, "--flow-base", "laplace", "--resume",
                    "--out", out)
    assert code == 0, cap.err
    resumed = json.loads((out / "dpi-checkpoint.json").read_text())
    assert resumed["step"] == 4 and resumed["flow"]["base_rank"] == final["flow"]["base_rank"]
    assert json.loads((out / "diagonal-fit" / "dpi-checkpoint.json").read_text())["step"] == 2
    assert resumed["history"][: len(final["history"])] == final["history"]
    none = tmp_path / "none"
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--flow-base", "laplace", "--laplace-steps",
                    "0", "--out", none)
    assert code == 0, cap.err
    assert "base_rank" not in json.loads((none / "dpi-checkpoint.json").read_text())["flow"]
    assert not (none / "diagonal-fit").exists()


def test_flow_output_softplus_is_positive_and_none_is_not(grmhd, tmp_path, capsys):
    """``--flow-output softplus``: every sample pixel > 0, no warm start; the default identity output: the
    p_eps jitter of the score prior may go below zero (no positivity floor); the choice is in the archive."""
    for output, negative in (("softplus", False), ("none", True)):
        out = tmp_path / output
        code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--flow-output", output, "--out", out)
        assert code == 0, cap.err
        with h5py.File(out / "samples.h5") as f:
            samples = f["samples"][...]
            meta = json.loads(f.attrs["metadata"])
        assert meta["settings"]["flow_output"] == output and np.isfinite(samples).all()
        assert bool((samples < 0).any()) == negative
        assert (out / "warm-start").exists() == negative


def test_the_pedestal_that_the_warm_start_avoids():
    """Why the identity output is warm-started (``warm_start_steps``), on the demo's closure data: from the
    featureless blob, lowering a uniform pedestal under the whole image until 90% of the flux is gone raises
    the log-likelihood by millions of nats (the short intra-site baselines pull harder than the 1% flux term,
    which is included); at an image that explains the data (here the truth) a pedestal either way costs."""
    from interfero.regrid import regrid
    from posterior.reconstruct import ReconstructSettings, build_problem

    s = ReconstructSettings(sys_noise=0.01)
    _, geom, op, _, flux = build_problem(DEMO / "eht2017_crescent_grf.uvfits", s)
    truth, tgeom = read_fits_image(DEMO / "crescent_grf_64.fits")
    truth = torch.tensor(regrid(truth, tgeom, geom), dtype=torch.float32)[None]
    blob = gaussian_blob(geom, flux, s.init_fwhm_uas)
    pedestal = flux / geom.npix**2  # Jy/pixel: all of the flux, spread evenly

    def log_lik(x):
        with torch.no_grad():
            return float(op.log_likelihood(x[None]))

    # measured: -1.15e7 -> -5.8e6 (half the flux gone) -> -3.1e6 (90% gone)
    assert log_lik(blob - 0.5 * pedestal) > log_lik(blob) + 5e6
    assert log_lik(blob - 0.9 * pedestal) > log_lik(blob - 0.5 * pedestal) + 2e6
    # measured: 1.06e3 at the truth, -1.5e4 with 25% more flux, -1.1e5 with half of it gone
    assert log_lik(truth + 0.25 * pedestal) < log_lik(truth) - 1e4
    assert log_lik(truth - 0.5 * pedestal) < log_lik(truth) - 1e5


def test_classical_regulariser_prior(grmhd, tmp_path, capsys):
    """``--prior tv+mem``: DPI with the flux-normalised RML regularisers; any image size, recorded as such."""
    out = tmp_path / "tv"
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--prior", "tv+mem", "--reg-weight", "3",
                    "--npix", "24", "--truth", grmhd / "truth.fits", "--out", out)
    assert code == 0, cap.err
    m = json.loads((out / "metrics.json").read_text())
    assert m["prior"] == "tv+mem" and m["prior_method"] == "closed form, weight 3" and m["npix"] == 24
    assert "truth_prior_percentile" not in m and np.isfinite(m["nxcorr"])
    # bounded couplings by default (the weak classical prior made exp couplings overflow)
    flow = json.loads((out / "dpi-checkpoint.json").read_text())["flow"]
    assert flow["coupling_scale"] == "sigmoid"
    # non-negative output by default (MEM needs positive pixels), so no warm start
    assert flow["output"] == "softplus" and m["warm_start_steps"] == 0 and not (out / "warm-start").exists()
    mean, _ = read_fits_image(out / "mean.fits")
    assert mean.shape == (24, 24) and np.isfinite(mean).all()
    with pytest.raises(SystemExit) as exit_:
        main(["reconstruct", str(grmhd / "obs.uvfits"), "--prior", "tv", "--reg-weight", "-1", "--out",
              str(tmp_path / "neg")])
    assert exit_.value.code == 2 and "--reg-weight: must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "neg").exists()


def test_dense_flow_layout_is_built_and_recorded(grmhd, tmp_path, capsys):
    """``--flow-layout dense --flow-hidden 16``: MLP couplings over all pixels, recorded in the checkpoint (a
    resume with the conv layout is another flow)."""
    out = tmp_path / "dense"
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--flow-layout", "dense", "--flow-hidden",
                    "16", "--out", out)
    assert code == 0, cap.err
    flow = json.loads((out / "dpi-checkpoint.json").read_text())["flow"]
    assert flow["layout"] == "dense" and flow["hidden"] == 16
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--resume", "--out", out)
    assert code == 2 and "checkpoint was made with another flow" in cap.err


def test_dct_flow_basis_is_built_and_recorded(grmhd, tmp_path, capsys):
    """``--flow-basis dct``: the final flow's base acts on DCT coefficients (recorded in its checkpoint: a resume
    with the pixel basis is another flow); the warm start stays a pixel flow."""
    out = tmp_path / "dct"
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--flow-basis", "dct", "--out", out)
    assert code == 0, cap.err
    assert json.loads((out / "dpi-checkpoint.json").read_text())["flow"]["basis"] == "dct"
    assert "basis" not in json.loads((out / "warm-start" / "dpi-checkpoint.json").read_text())["flow"]
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--resume", "--flow-basis", "pixel",
                    "--out", out)
    assert code == 2 and "checkpoint was made with another flow" in cap.err


def test_score_prior_method_fits_with_the_prior_gradient_alone(grmhd, tmp_path, capsys):
    """``--prior-method score``: the fit runs and records it; its loss has no prior term (the score's value is
    0), so the recorded prior term is exactly 0 at every step while the data and entropy terms are not."""
    out = tmp_path / "rec"
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--prior-method", "score", "--out", out)
    assert code == 0, cap.err
    m = json.loads((out / "metrics.json").read_text())
    assert m["prior_method"] == "score" and np.isfinite(m["chi2_cphase"])
    hist = json.loads((out / "dpi-checkpoint.json").read_text())["history"]
    assert hist and all(h["log_prior"] == 0.0 and h["log_lik"] != 0.0 for h in hist)


def test_resume_continues_from_the_checkpoint(grmhd, tmp_path, capsys):
    out = tmp_path / "rec"
    assert run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--out", out)[0] == 0
    first = json.loads((out / "dpi-checkpoint.json").read_text())
    assert first["step"] == 2 and first["flow"]["coupling_scale"] == "sigmoid"
    args = [a if a != "2" or i != 1 else "4" for i, a in enumerate(TINY)]
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *args, "--resume", "--out", out)
    assert code == 0, cap.err
    second = json.loads((out / "dpi-checkpoint.json").read_text())
    assert second["step"] == 4
    # the final fit started from the 2-step warm start: a longer --steps does not extend that
    assert json.loads((out / "warm-start" / "dpi-checkpoint.json").read_text())["step"] == 2
    assert second["history"][: len(first["history"])] == first["history"]
    # another flow (the unbounded couplings) cannot continue this checkpoint: one line, exit 2
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *args, "--coupling-scale", "exp", "--resume",
                    "--out", out)
    assert code == 2 and "checkpoint was made with another flow" in cap.err
    assert len(cap.err.strip().splitlines()) == 1


def test_ensemble_pools_independent_fits_and_resumes(grmhd, tmp_path, capsys):
    args = [a if a != "4" else "6" for a in TINY]  # 6 samples: 3 per member
    one, ens = tmp_path / "one", tmp_path / "ens"
    assert run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY[:4], "--samples", "3", *TINY[6:],
               "--out", one)[0] == 0
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *args, "--ensemble", "2", "--out", ens)
    assert code == 0, cap.err
    m = json.loads((ens / "metrics.json").read_text())
    assert m["ensemble"] == 2 and m["n_samples"] == 6
    members = m["ensemble_members"]
    assert [x["seed"] for x in members] == [0, 1] and [x["n_samples"] for x in members] == [3, 3]
    assert members[0]["shift_px"] == [0, 0] and all("bound" in x for x in members)
    # each member's own data fit: member 0's mean is the single fit's, so are its chi^2
    single = json.loads((one / "metrics.json").read_text())
    for key in ("chi2_cphase", "chi2_logcamp"):
        assert members[0][key] == pytest.approx(single[key], rel=1e-5)
    # the samples' own fit (a posterior predictive check), scored where each member was fitted (unmoved)
    op = build_problem(grmhd / "obs.uvfits", ReconstructSettings())[2]
    with h5py.File(ens / "samples.h5") as b:
        own = [b["samples"][:3], np.roll(b["samples"][3:], members[1]["shift_px"], axis=(-2, -1))]
    values = [sample_chi2(op, x) for x in own]
    for member, v in zip(members, values):
        assert member["chi2_samples_median"] == pytest.approx({k: float(np.median(c)) for k, c in v.items()}, rel=1e-4)
    assert single["chi2_samples"]["cphase"]["median"] == pytest.approx(members[0]["chi2_samples_median"]["cphase"])
    for k, summ in m["chi2_samples"].items():
        both = np.concatenate([v[k] for v in values])
        assert summ["median"] == pytest.approx(float(np.median(both)), rel=1e-4)
        assert summ["p10"] <= summ["median"] <= summ["p90"]
    assert json.loads((ens / "component-1" / "dpi-checkpoint.json").read_text())["step"] == 2
    # member 0 is the single fit with the same seed: its samples come first, unmoved
    with h5py.File(one / "samples.h5") as a, h5py.File(ens / "samples.h5") as b:
        np.testing.assert_array_equal(b["samples"][:3], a["samples"][:])
        assert not np.allclose(b["samples"][3:], a["samples"][:])
        assert b["fit_sizes"][:].tolist() == [3, 3] and "log_q" not in b and "fit_sizes" not in a
    # both members continue from their checkpoints
    longer = [a if a != "2" or i != 1 else "4" for i, a in enumerate(args)]
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *longer, "--ensemble", "2", "--resume", "--out", ens)
    assert code == 0, cap.err
    for folder in (ens, ens / "component-1"):
        assert json.loads((folder / "dpi-checkpoint.json").read_text())["step"] == 4


def test_pooled_members_form_the_equal_weight_mixture():
    from posterior.reconstruct import pool_components
    from posterior.summary import summarize

    rng = np.random.default_rng(0)
    base = np.zeros((16, 16))
    base[5:9, 6:11] = 1.0
    a = base + 0.01 * rng.standard_normal((400, 1, 16, 16))
    moved = np.roll(base, (1, -2), axis=(0, 1))
    b = 1.5 * moved + 0.02 * rng.standard_normal((400, 1, 16, 16))
    pa, pb = summarize(a), summarize(b)
    pooled, shifts = pool_components([pa, pb], align=False)
    np.testing.assert_array_equal(pooled.samples, np.concatenate([a, b]))
    assert pooled.fit_sizes == [400, 400]
    # Rubin's rules for K = 2: mean of the means; T = mean within-fit variance + (1 + 1/2) * between-fit
    # variance, the latter (ddof 1) being (m_a - m_b)^2 / 2
    np.testing.assert_allclose(pooled.mean, 0.5 * (a.mean(0) + b.mean(0)), atol=1e-12)
    total = 0.5 * (a.var(0, ddof=1) + b.var(0, ddof=1)) + 0.75 * (a.mean(0) - b.mean(0)) ** 2
    np.testing.assert_allclose(pooled.std**2, total, rtol=1e-9)
    assert shifts == [[0, 0], [0, 0]] and pooled.log_q is None
    aligned, shifts = pool_components([pa, pb], align=True)
    assert shifts[1] == [1, -2]
    # aligned by whole pixels (no interpolation), member b is back on a: only the brightness differs
    np.testing.assert_array_equal(aligned.samples[400:], np.roll(b, (-1, 2), axis=(-2, -1)))
    # and moved back to where each was fitted, the members are as they were
    from posterior.summary import fitted_samples

    np.testing.assert_array_equal(fitted_samples(aligned.samples, aligned.fit_sizes, shifts), np.concatenate([a, b]))
    with pytest.raises(ValueError):
        fitted_samples(aligned.samples, aligned.fit_sizes, shifts[:1])  # one move per fit
    inside = base > 0
    # brightness 1 against 1.5 on the source: sqrt(0.75 * 0.5^2) = 0.43 once aligned
    assert np.sqrt(np.mean(aligned.std[0][inside] ** 2)) == pytest.approx(0.433, abs=0.01)
    assert np.sqrt(np.mean(pooled.std[0][inside] ** 2)) > 0.6


def test_zero_baseline_flux_and_blob(grmhd):
    obs = read_uvfits(grmhd / "obs.uvfits")
    assert zero_baseline_flux(obs) == pytest.approx(1.995, rel=0.05)
    from interfero.io import ImageGeometry

    blob = gaussian_blob(ImageGeometry(32, 160.0), 2.0, 50.0)
    assert float(blob.sum()) == pytest.approx(2.0, rel=1e-5)


def test_systematic_noise_inflates_the_closure_sigmas(grmhd):
    from interfero.corruptions import add_systematic_noise
    from interfero.io import ImageGeometry
    from interfero.operators import InterferometryOperator
    from posterior.reconstruct import ReconstructSettings, build_problem

    obs = read_uvfits(grmhd / "obs.uvfits")
    _, _, op0, _, _ = build_problem(grmhd / "obs.uvfits", ReconstructSettings())
    _, _, op2, _, _ = build_problem(grmhd / "obs.uvfits", ReconstructSettings(sys_noise=0.02))
    ref = InterferometryOperator(add_systematic_noise(obs, 0.02), ImageGeometry(32, 160.0), products=op2.products)
    for k in op2.products:
        assert torch.all(op2.sigmas[k] > op0.sigmas[k])
        torch.testing.assert_close(op2.sigmas[k], ref.sigmas[k])


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--steps", "0"], "--steps: must be >= 1"),
        (["--npix", "64"], "is for 32x32 images, not 64x64"),
        (["--fov", "200"], "trained on a 160 uas field of view"),
        (["--data", "cphase,foo"], "unknown data product"),
        (["--prior", "nosuchprior"], "nosuchprior"),
        (["--samples", "1"], "--samples: must be >= 2"),
        (["--sys-noise", "-0.1"], "--sys-noise must be a fraction"),
        (["--sys-noise", "nan"], "--sys-noise must be a fraction"),
        (["--warm-start", "-1"], "--warm-start: must be >= 0"),
        (["--ensemble", "0"], "--ensemble: must be >= 1"),
        (["--ensemble", "3"], "--samples 4 is too few for --ensemble 3"),
        (["--ensemble", "2", "--method", "map"], "is for --method dpi only"),
        (["--laplace-steps", "-1"], "--laplace-steps: must be >= 0"),
        (["--laplace-start", "middle"], "--laplace-start: invalid choice"),
        (["--flow-basis", "wavelet"], "--flow-basis: invalid choice"),
        (["--flow", "glow", "--flow-base", "laplace"], "--flow-base laplace needs --flow realnvp"),
        (["--prior-method", "score", "--alpha", "0.5"], "--prior-method score gives the prior's gradient only"),
    ],
)
def test_bad_settings_are_one_line_errors(grmhd, tmp_path, capsys, extra, message):
    out = tmp_path / "rec"
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, *extra, "--out", out)
    assert code == 2
    assert message in cap.err and len(cap.err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_files_are_one_line_errors(grmhd, tmp_path, capsys):
    empty = tmp_path / "empty.uvfits"
    empty.write_bytes(b"")
    code, cap = run(capsys, "reconstruct", empty, *TINY, "--out", tmp_path / "a")
    assert code == 2 and "empty file" in cap.err
    # two stations: no closure quantities
    obs = read_uvfits(grmhd / "obs.uvfits")
    two = obs.keep_stations(["AA", "AP"] if "AP" in obs.stations else list(obs.stations[:2]))
    write_uvfits(two, tmp_path / "two.uvfits")
    code, cap = run(capsys, "reconstruct", tmp_path / "two.uvfits", *TINY, "--out", tmp_path / "b")
    assert code == 2 and "no closure phases" in cap.err and not (tmp_path / "b").exists()
    # an output path below a file
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--out", blocker / "sub")
    assert code == 2 and "is a file, not a folder" in cap.err
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--out", blocker)
    assert code == 2 and "not a folder" in cap.err


def test_total_flux_check_bounds(tmp_path):
    check_total_flux(1.60, 2.0, 0.02, tmp_path)  # MEM's measured pull on the demo (20% low) is a posterior
    check_total_flux(1.01, 2.0, 0.02, tmp_path)
    for bad in (0.99, 3.01, 1e17, float("nan"), float("inf")):
        with pytest.raises(InterferoError, match="diverged"):
            check_total_flux(bad, 2.0, 0.02, tmp_path)
    check_total_flux(7.0, 2.0, 0.5, tmp_path)  # a wide flux term (--flux-sigma 0.25) allows 10 sigma


def test_a_runaway_fit_is_refused_not_written(grmhd, tmp_path, capsys, monkeypatch):
    """Finite but absurd images (the 1e17 Jy a nearly overflowing flow once gave) exit 2 with nothing written
    but the checkpoint."""
    from posterior.dpi import DPI

    real = DPI.posterior

    def runaway(self, n=None):
        post = real(self, n)
        post.samples *= 1e17
        post.mean *= 1e17
        return post

    monkeypatch.setattr(DPI, "posterior", runaway)
    out = tmp_path / "rec"
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--out", out)
    assert code == 2 and "DPI fit diverged: posterior mean total flux" in cap.err
    assert len(cap.err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["dpi-checkpoint-00000002.safetensors", "dpi-checkpoint.json",
                                                     "warm-start"]


def test_an_absurd_data_fit_is_refused(small_obs, tmp_path):
    """The crescent the observation was made of fits its closures (reduced chi^2 near 1); the same flux in
    an off-centre point-like blob does not (chi^2 in the thousands) and is refused with one line."""
    from interfero.io import ImageGeometry
    from interfero.models import render
    from interfero.operators import InterferometryOperator
    from posterior.metrics import reduced_chi2
    from posterior.reconstruct import check_data_fit

    geom = ImageGeometry(16, 160.0)
    op = InterferometryOperator(small_obs, geom, products=("cphase", "logcamp"))
    truth = render("crescent", geom, flux=1.5)
    check_data_fit(op, truth, 1000.0, tmp_path)
    blob = render("gaussian", geom, flux=1.5, width=15.0, x0=40.0, y0=-30.0)
    blob = blob + 0.3 * render("gaussian", geom, width=20.0)
    chi2 = reduced_chi2(op, torch.tensor(blob[None, None], dtype=torch.float32))
    assert max(chi2.values()) > 1000, chi2
    with pytest.raises(InterferoError, match="reduced chi\\^2 .* above --max-chi2 1000"):
        check_data_fit(op, blob, 1000.0, tmp_path, method="dps")
    # a sampling baseline's runs are judged by their own median fit, not by their mean's
    runs = {p: {"median": 1.2, "p10": 1.0, "p90": 1.5} for p in ("cphase", "logcamp")}
    assert check_data_fit(op, blob, 1000.0, tmp_path, "pnp-dm", runs) == chi2
    runs["logcamp"]["median"] = 2e3
    with pytest.raises(InterferoError, match=r"pnp-dm fit refused: reduced chi\^2 logcamp 2e\+03 \(the runs' median\)"):
        check_data_fit(op, truth, 1000.0, tmp_path, "pnp-dm", runs)


def test_data_and_prior_disagreements_are_warnings():
    from types import SimpleNamespace

    from posterior.reconstruct import prior_mismatch_warnings
    from priors.pretrained import load_prior

    prior = load_prior("default")  # trained on disk-lnflux black holes: fluxes 0.49-4.0 Jy (99.7%)
    assert prior_mismatch_warnings(229.1e9, 1.4, prior) == []
    lines = prior_mismatch_warnings(86e9, 1.4e6, prior)
    assert len(lines) == 2 and "86 GHz" in lines[0] and "1.4e+06 Jy is outside the 0.49-4 Jy" in lines[1], lines
    faces = SimpleNamespace(training_data={"kind": "face-gaussian"}, name="faces16")
    assert prior_mismatch_warnings(86e9, 1e6, faces) == []


def test_a_field_of_view_mismatch_allowed_is_a_recorded_warning(grmhd, tmp_path, capsys):
    out = tmp_path / "rec"
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *TINY, "--fov", "200", "--allow-fov-mismatch",
                    "--out", out)
    assert code == 0, cap.err
    lines = [line for line in cap.err.splitlines() if "warning" in line]
    assert len(lines) == 1 and "160 uas field of view, not 200 uas" in lines[0]
    assert json.loads((out / "metrics.json").read_text())["warnings"] == [lines[0].split("warning: ", 1)[1]]


def test_default_is_an_ensemble_of_three_fits_and_baselines_run_once(grmhd):
    from posterior.reconstruct import ENSEMBLE, ReconstructSettings, build_problem

    assert ENSEMBLE == 3 and ReconstructSettings().ensemble == 3
    assert ReconstructSettings(method="map").ensemble == 1 and ReconstructSettings(ensemble=2).ensemble == 2
    with pytest.raises(InterferoError, match="--ensemble must be >= 1 and is for --method dpi only"):
        build_problem(grmhd / "obs.uvfits", ReconstructSettings(method="dps", ensemble=2))


def test_pooling_registers_members_by_their_data_misfit():
    """With a misfit, a member moves by the whole-pixel shift (within a pixel of the nxcorr one) under
    which the mean of the members fits best: here a misfit that wants the pair's mean on the first
    member's grid, where nxcorr's rounding of a half-pixel offset would pick the other side."""
    from posterior.reconstruct import pool_components
    from posterior.summary import summarize

    rng = np.random.default_rng(1)
    c = np.arange(16) + 0.5 - 8
    blob = np.exp(-0.5 * (c[:, None] ** 2 + c[None, :] ** 2) / 1.5**2)
    half = np.exp(-0.5 * ((c[:, None] - 0.6) ** 2 + (c[None, :] + 0.6) ** 2) / 1.5**2)  # moved (0.6, -0.6)
    a = blob + 0.01 * rng.standard_normal((50, 1, 16, 16))
    b = half + 0.01 * rng.standard_normal((50, 1, 16, 16))
    pa, pb = summarize(a), summarize(b)
    assert pool_components([pa, pb], align=True)[1][1] == [1, -1]  # nxcorr, rounded
    target = 0.5 * (blob + np.roll(half, (0, 1), axis=(0, 1)))  # the misfit's best pair mean: b moved by (0, 1)

    def misfit(img):
        return float(((img.reshape(16, 16) - target) ** 2).sum())

    pooled, shifts = pool_components([pa, pb], align=True, misfit=misfit)
    assert shifts == [[0, 0], [0, -1]]
    np.testing.assert_array_equal(pooled.samples[50:], np.roll(b, (0, 1), axis=(-2, -1)))


def test_fits_that_disagree_are_reported():
    """The pooled mean fitting a product above chi^2 2 and twice worse than every fit's own mean: one warning
    line naming it (and not the product the mean fits); agreeing fits, a single fit or a mean merely a little
    worse than its fits: none."""
    from posterior.reconstruct import fits_disagree_warning

    members = [{"chi2_cphase": 1.2, "chi2_logcamp": 0.9}, {"chi2_cphase": 1.6, "chi2_logcamp": 1.1},
               {"chi2_cphase": 1.1, "chi2_logcamp": 0.8}]
    (line,) = fits_disagree_warning({"chi2_cphase": 391.0, "chi2_logcamp": 1.3}, members)
    assert "3 fits found different images" in line and "cphase 391 (fits' own at most 1.6)" in line
    assert "logcamp" not in line
    assert fits_disagree_warning({"chi2_cphase": 3.1, "chi2_logcamp": 1.3}, members) == []  # below twice 1.6
    assert fits_disagree_warning({"chi2_cphase": 1.9, "chi2_logcamp": 1.9}, [{"chi2_cphase": 0.5,
                                                                              "chi2_logcamp": 0.5}] * 3) == []
    assert fits_disagree_warning({"chi2_cphase": 50.0}, None) == []
    (line,) = fits_disagree_warning({"chi2_logcamp": 1920.0}, [{"chi2_logcamp": 1.1}], "runs")
    assert line.startswith("the runs found different images") and "logcamp 1.92e+03 (runs' own median 1.1)" in line


def test_fit_bound_averages_the_last_fifth_of_the_reverse_kl_steps():
    from posterior.reconstruct import fit_bound

    history = [{"step": k, "loss": float(k)} for k in range(10, 1001, 10)]
    assert fit_bound(history, 1000) == pytest.approx(np.mean(np.arange(810, 1001, 10)))
    refined = history + [{"step": 1010, "loss": -1e6, "objective": "forward_kl"}]  # another objective: left out
    assert fit_bound(refined, 1010) == pytest.approx(np.mean(np.arange(810, 1001, 10)))
    assert fit_bound([], 1000) is None


def test_map_warm_start_starts_the_flow_near_the_data():
    """``warm_start="map"``: the flow starts at the blurred MAP image, a positive image of the flux term's flux far
    closer to the demo's closure data than the blob (reduced chi^2 measured: blob 1206 / 41030, the start 0.42 /
    109, the blur costing the long baselines' log closure amplitudes)."""
    from posterior.reconstruct import image_chi2, map_warm_start, reconstruction_flow

    s = ReconstructSettings(sys_noise=0.01, warm_start="map")
    _, geom, op, prior, flux = build_problem(DEMO / "eht2017_crescent_grf.uvfits", s)
    start = map_warm_start(s, geom, flux, op, prior)
    assert start.shape == (1, geom.npix, geom.npix) and bool((start > 0).all())
    assert float(start.sum()) == pytest.approx(flux, rel=0.03)  # the 1% flux term; the blur keeps the flux
    blob = image_chi2(op, gaussian_blob(geom, flux, s.init_fwhm_uas).numpy())
    chi2 = image_chi2(op, start.numpy())
    for k in chi2:
        assert chi2[k] < 1e-2 * blob[k], (k, chi2[k], blob[k])
    with torch.no_grad():
        x = reconstruction_flow(s, geom, flux, start).sample(512)[0]
    assert float((x.mean(0) - start).abs().max()) < 0.02 * float(start.max())  # measured 0.003


def test_prior_start_gives_each_member_its_own_draw_of_the_prior(capsys, tmp_path, monkeypatch):
    """``warm_start="prior"``: each fit's warm start begins at a draw of the prior seeded by the member's seed
    (non-negative, the flux term's flux), so an ensemble's fits start apart; a classical prior is refused."""
    import posterior.reconstruct as rec

    monkeypatch.setattr(rec, "PRIOR_START_STEPS", 10)  # a rough draw is enough to start from (200 by default)
    s = ReconstructSettings(sys_noise=0.01, warm_start="prior")
    _, geom, op, prior, flux = build_problem(DEMO / "eht2017_crescent_grf.uvfits", s)
    a, again, b = (rec.prior_draw_start(replace(s, seed=k), flux, prior) for k in (0, 0, 1))
    assert a.shape == (1, geom.npix, geom.npix) and torch.equal(a, again)
    assert bool((a >= 0).all()) and float(a.sum()) == pytest.approx(flux, rel=1e-5)
    assert float((a - b).abs().sum()) > 0.3 * flux  # two draws, not one image: measured 1.0 flux apart
    starts = []
    draw = rec.prior_draw_start

    def recording(s, flux, prior):
        x = draw(s, flux, prior)
        starts.append((s.seed, x))
        return x

    monkeypatch.setattr(rec, "prior_draw_start", recording)
    argv = [a if a != "1" or TINY[i - 1] != "--ensemble" else "2" for i, a in enumerate(TINY)]
    code, cap = run(capsys, "reconstruct", DEMO / "eht2017_crescent_grf.uvfits", *argv, "--warm-start-kind", "prior",
                    "--sys-noise", "0.01", "--out", tmp_path / "p")
    assert code == 0, cap.err
    assert [seed for seed, _ in starts] == [0, 1] and not torch.equal(starts[0][1], starts[1][1])
    m = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert m["warm_start"] == "prior"
    code, cap = run(capsys, "reconstruct", DEMO / "eht2017_crescent_grf.uvfits", *TINY, "--prior", "tv",
                    "--warm-start-kind", "prior", "--out", tmp_path / "tv")
    assert code == 2 and "--warm-start-kind prior" in cap.err and not (tmp_path / "tv").exists()


def test_an_ensembles_laplace_flows_all_start_at_one_image(grmhd, tmp_path, capsys, monkeypatch):
    """With ``--ensemble K`` and ``--flow-base laplace`` every member's diagonal fit runs first, then each
    member's Laplace-based flow starts at the same image (``pooled_laplace_start``); a resume reloads them."""
    import posterior.reconstruct as rec

    starts = []
    fit_laplace = rec.fit_laplace

    def recording(s, geom, flux, op, prior, mode, x0, *args, **kwargs):
        starts.append((s.seed, x0.clone()))
        return fit_laplace(s, geom, flux, op, prior, mode, x0, *args, **kwargs)

    monkeypatch.setattr(rec, "fit_laplace", recording)
    argv = [a if a != "1" or TINY[i - 1] != "--ensemble" else "2" for i, a in enumerate(TINY)]
    out = tmp_path / "ens"
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *argv, "--flow-base", "laplace", "--out", out)
    assert code == 0, cap.err
    assert [seed for seed, _ in starts] == [0, 1] and torch.equal(starts[0][1], starts[1][1])
    for folder in (out, out / "component-1"):
        assert json.loads((folder / "dpi-checkpoint.json").read_text())["flow"]["base_rank"] > 0
        assert (folder / "diagonal-fit" / "dpi-checkpoint.json").is_file()
    m = json.loads((out / "metrics.json").read_text())
    assert [e["laplace_steps"] for e in m["ensemble_members"]] == [2, 2]
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *argv, "--flow-base", "laplace", "--resume",
                    "--out", out)
    assert code == 0, cap.err
    assert torch.equal(starts[2][1], starts[0][1])  # the same start recomputed from the reloaded fits
    code, cap = run(capsys, "reconstruct", grmhd / "obs.uvfits", *argv, "--flow-base", "laplace", "--laplace-start",
                    "own", "--out", tmp_path / "own")
    assert code == 0, cap.err
    assert not torch.equal(starts[-2][1], starts[-1][1])  # each member from its own diagonal fit's mean


def test_independent_runs_of_a_baseline_are_moved_onto_the_first_run_s_position():
    """Closure data leave the position free: runs that differ only by whole-pixel moves are put back on the
    first run's grid (their mean then fits the data as each run does), and their moves undo exactly; data
    with complex visibilities fix the position, and nothing moves."""
    from interfero.regrid import regrid
    from posterior.reconstruct import align_runs
    from posterior.summary import summarize

    obs = DEMO / "eht2017_crescent_grf.uvfits"
    _, geom, op, _, _ = build_problem(obs, ReconstructSettings())
    truth, tgeom = read_fits_image(DEMO / "crescent_grf_64.fits")
    img = regrid(truth, tgeom, geom)[None]
    moves = [(0, 0), (1, -2), (-1, 0), (2, 1), (0, 1)]
    runs = np.stack([np.roll(img, m, axis=(-2, -1)) for m in moves])
    post, shifts = align_runs(summarize(runs), op)
    assert shifts == [list(m) for m in moves]  # each run is moved back by -shift onto the first
    np.testing.assert_allclose(post.samples, np.repeat(runs[:1], len(moves), 0), atol=1e-12)

    def loglik(x):
        return float(op.log_likelihood(torch.tensor(x[None], dtype=torch.float32), op.data)[0])

    assert loglik(post.mean) > loglik(runs.mean(0)) + 100
    back = np.stack([np.roll(x, sh, axis=(-2, -1)) for x, sh in zip(post.samples, shifts)])
    np.testing.assert_allclose(back, runs, atol=1e-12)
    _, _, vis_op, _, _ = build_problem(obs, ReconstructSettings(products=("vis",)))
    unmoved, none = align_runs(summarize(runs), vis_op)
    assert none is None and np.array_equal(unmoved.samples, runs)
