"""The shipped priors load by name, with no download, and give finite log p, scores and samples."""

import json
import math
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch

from interfero.errors import InterferoError
from posterior.cli import main
from priors.datasets import make_dataset
from priors.pretrained import load_prior, prior_path, shipped_priors, training_law


def test_default_is_bh32lnflux():
    assert {"bh32", "bh32disk", "bh32lnflux"} <= set(shipped_priors())
    prior = load_prior("default")
    assert prior.name == "bh32lnflux" and prior.image_shape == (1, 32, 32) and prior.fov_uas == 160.0
    assert training_law("default") == prior.training_data["law"] == "disk-lnflux"  # read without the weights
    with pytest.raises(InterferoError, match="'faces16' records no black-hole training law"):
        training_law("faces16")
    # p_eps's smoothing: the VP kernel's std at eps, sqrt(1 - exp(-int_0^eps beta)), in Jy/pixel
    b0, b1, eps = 0.1, 20.0, 1e-3
    std = (1 - math.exp(-(b0 * eps + 0.5 * (b1 - b0) * eps**2))) ** 0.5
    assert prior.eps_std == pytest.approx(std * prior.scale, rel=1e-9)
    assert 0.0012 < prior.eps_std < 0.0013


def test_loaded_network_is_channels_last_and_scores_as_the_contiguous_one():
    """A loaded prior holds its convolution weights channels-last (oneDNN's fast layout); the layout changes
    the order of the sums only, so the ELBO and its gradient agree with a contiguous copy's to float rounding."""
    prior = load_prior("default")
    convs = [m for m in prior.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert not all(m.weight.is_contiguous() for m in convs if m.kernel_size == (3, 3))
    x = torch.from_numpy(make_dataset("blackholes", 4, 32, seed=3)["images"]).float()

    def value_and_grad(p):
        xr = x.clone().requires_grad_(True)
        lp = p.log_prob(xr, generator=torch.Generator().manual_seed(5))
        return lp.detach(), torch.autograd.grad(lp.sum(), xr)[0]

    lp, g = value_and_grad(prior)
    lp_c, g_c = value_and_grad(prior.to(memory_format=torch.contiguous_format))
    assert torch.allclose(lp, lp_c, rtol=1e-5, atol=0.0)
    assert float((g - g_c).norm() / g_c.norm()) < 1e-4


@pytest.mark.parametrize("name, base, law, init, steps", [
    ("bh32disk", "bh32", "disk", "bh32", 3000),  # bh32 fine-tuned on the GRMHD-like disk law
    ("bh32lnflux", "bh32disk", "disk-lnflux", "data/weights/bh32disk", 5000),  # ... then on log-normal flux
])
def test_fine_tuned_prior_lineage(name, base, law, init, steps):
    parent, prior = load_prior(base), load_prior(name)
    assert prior.image_shape == parent.image_shape and prior.fov_uas == parent.fov_uas
    assert prior.training_data["law"] == law and (prior.shift, prior.scale) == (parent.shift, parent.scale)
    record = json.loads(prior_path(name).with_suffix(".json").read_text())
    assert record["training"]["config"]["init"] == init and record["training"]["steps"] == steps


@pytest.mark.parametrize("name", ["default", "bh32"])
def test_shipped_black_hole_prior_log_prob_and_score(name):
    prior = load_prior(name)
    x = torch.from_numpy(make_dataset("blackholes", 2, 32, seed=3)["images"]).requires_grad_(True)
    elbo = prior.log_prob(x, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(elbo.sum(), x)
    assert elbo.shape == (2,) and torch.all(torch.isfinite(elbo)) and torch.all(torch.isfinite(g))
    prior.method = "ode"
    prior.ode_kwargs |= {"gradient": "none", "rtol": 1e-2, "atol": 1e-2}
    exact = prior.log_prob(x.detach(), generator=torch.Generator().manual_seed(0))
    assert torch.all(torch.isfinite(exact)) and prior.last_nfe > 0
    assert torch.all(torch.isfinite(prior.score(x.detach())))
    # a black hole is far more probable than a noise image of the same flux under a black-hole prior
    noise = torch.rand(1, 1, 32, 32) * x[:1].detach().sum() / 512
    assert float(prior.log_prob(noise)) < float(exact.min())


def test_sample_prior_cli(tmp_path):
    assert main(["sample-prior", "--prior", "default", "--n", "2", "--steps", "5", "--out", str(tmp_path)]) == 0
    with h5py.File(tmp_path / "samples.h5") as f:
        assert f["images"].shape == (2, 1, 32, 32)
    assert json.loads((tmp_path / "summary.json").read_text())["n"] == 2
    assert (tmp_path / "samples.png").stat().st_size > 0


@pytest.mark.parametrize("kind", ["blackholes", "face-gaussian", "patches"])
def test_make_dataset_cli(tmp_path, kind):
    out = tmp_path / f"{kind}.h5"
    assert main(["make-dataset", kind, "--n", "3", "--npix", "16", "--out", str(out)]) == 0
    with h5py.File(out) as f:
        assert f["images"].shape == (3, 1, 16, 16)
        assert json.loads(f.attrs["generator"])["kind"] == kind


def test_shipped_faces16_score_error_against_the_true_gaussian():
    """faces16 learned the face Gaussian: its score-matching KL bound against the closed-form diffused score.

    Measured on these 64 images: 1.01 nats for the shipped weights (stage 13, antithetic noise pairs), 1.05 for
    stage 12 (also antithetic), 1.16 for stage 11, 1.28 for stage 10, 1.32 for stage 9, 1.48 for stage 8, 1.8 for
    stage 7, 2.6 for stage 6, 3.7 for stage 5 (stage 4 plus a rank-256 GlobalLinear branch), 8.7 for stage 4
    (200000 draws), 12.3 for stage 3, 27.6 for 3000 steps.
    """
    from priors.datasets.faces import face_gaussian
    from priors.score_error import score_error_bound

    p = load_prior("faces16")
    g = face_gaussian(16)
    true_z = g.standardised(p.shift, p.scale).diffused(p.sde)
    x = p.to_z(g.sample(64, generator=torch.Generator().manual_seed(0)).float())
    bound, _, _ = score_error_bound(p.score_model, true_z, p.sde, x, generator=torch.Generator().manual_seed(1))
    assert 0 < float(bound.mean()) < 1.1


def test_check_prior_denoiser_only_reports_the_flux_bias(tmp_path):
    """scripts/check_prior.py --denoiser-only: the denoiser's flux bias per t, finite, with positive errors, and
    the ELBO's white-noise curvature, a positive fraction of the jitter's (0.46-0.92 measured, docs/results.md)."""
    out = tmp_path / "den.json"
    cmd = [sys.executable, "scripts/check_prior.py", "--prior", "default", "--n", "16", "--denoiser-only",
           "--curvature-repeats", "2", "--out", str(tmp_path), "--json", str(out)]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["prior"] == "bh32lnflux" and res["n_images"] == 16
    rows = res["tweedie_flux_bias"]
    assert [r["t"] for r in rows] == [0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7]
    assert all(r["se_jy"] > 0 and abs(r["bias_jy"]) < 10 * (r["se_jy"] + 0.05) for r in rows)
    curv = res["elbo_white_curvature"]
    assert curv["n_images"] == 8 and curv["repeats"] == 2 and abs(curv["jitter_jy"] - 0.00124) < 2e-5
    assert all(0.2 < curv[k]["min"] <= curv[k]["median"] <= curv[k]["max"] < 1.3 for k in ("clean", "jittered"))
    assert json.loads((tmp_path / "denoiser.json").read_text()) == res
