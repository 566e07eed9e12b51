"""Training: DSM loss goes down, checkpoints round-trip bit-exactly, resume (also after kill -9), torchrun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from interfero.errors import InterferoError
from posterior.cli import main
from priors.checkpoint import load_prior_network, load_tensors
from priors.datasets import make_dataset
from priors.datasets.store import write_dataset
from priors.networks import GaussianScore, GlobalLinear, UNet
from priors.sde import VPSDE
from priors.train import TrainConfig, Trainer, dsm_loss, train

SMALL = {"width": 8, "batch_size": 16, "warmup": 10, "sample_every": 0, "threads": 1, "lr": 2e-3}


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "faces.h5"
    write_dataset(path, make_dataset("face-gaussian", 512, 16, seed=0))
    return path


def _weights(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_unet_shapes_and_sizes():
    for size in (16, 32, 64):
        net = UNet(size, width=8)
        x = torch.randn(2, 1, size, size)
        assert net(x, torch.rand(2)).shape == x.shape


def test_training_lowers_dsm_loss_and_exports(faces, tmp_path):
    cfg = TrainConfig(data=str(faces), out=str(tmp_path / "run"), steps=300, ckpt_every=300, **SMALL)
    trainer = Trainer(cfg, progress=False)
    z_eval = trainer.z[:256]
    sde = VPSDE()

    def eval_loss(net):
        with torch.no_grad():
            return float(dsm_loss(net, sde, z_eval, torch.Generator().manual_seed(0)).mean())

    before = eval_loss(trainer.net)
    trainer.run()
    after = eval_loss(trainer.ema.module)
    assert after < 0.7 * before, (before, after)
    net, record = load_prior_network(tmp_path / "run" / "prior")
    assert record["training"]["steps"] == 300 and record["image_size"] == 16
    for k, v in trainer.ema.module.state_dict().items():  # bit-exact round trip
        assert torch.equal(net.state_dict()[k], v), k


def test_resume_continues_exactly(faces, tmp_path):
    def cfg(name, steps):
        return TrainConfig(data=str(faces), out=str(tmp_path / name), steps=steps, ckpt_every=3, **SMALL)

    full = Trainer(cfg("a", 6), progress=False)
    full.run()
    Trainer(cfg("b", 3), progress=False).run()
    again = Trainer(cfg("b", 6), resume=True, progress=False)
    assert again.step == 3
    again.run()
    for (k, v), w in zip(full.net.state_dict().items(), again.net.state_dict().values()):
        assert torch.equal(v, w), k
    for (k, v), w in zip(full.ema.state_dict().items(), again.ema.state_dict().values()):
        assert torch.equal(v, w), k


def test_resume_after_kill_9(faces, tmp_path):
    out = tmp_path / "killed"
    args = ["--data", str(faces), "--out", str(out), "--width", "8", "--batch-size", "16", "--warmup", "10",
            "--sample-every", "0", "--threads", "1", "--lr", "2e-3", "--no-progress"]
    cmd = [sys.executable, "-m", "posterior.cli", "train-prior", *args]
    proc = subprocess.Popen([*cmd, "--steps", "100000", "--ckpt-every", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pointer = out / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (pointer.is_file() and json.loads(pointer.read_text())["step"] >= 4):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = json.loads(pointer.read_text())["step"]
    assert saved >= 4
    load_tensors(out / json.loads(pointer.read_text())["file"])  # the named checkpoint is complete
    target = saved + 2
    assert main(["train-prior", *args, "--steps", str(target), "--ckpt-every", "2", "--resume"]) == 0
    assert json.loads(pointer.read_text())["step"] == target
    # the same as an uninterrupted run
    ref = Trainer(TrainConfig(data=str(faces), out=str(tmp_path / "ref"), steps=target, ckpt_every=1000, **SMALL),
                  progress=False)
    ref.run()
    net, _ = load_prior_network(out / "prior")
    for k, v in ref.ema.module.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k


class Killed(BaseException):
    """Stands for ``kill -9``: nothing after it runs."""


@pytest.mark.parametrize("where,resumed_at", [("tensor-write", 3), ("between", 3), ("record-write", 3),
                                              ("after-both", 6)])
def test_a_training_checkpoint_is_one_atomic_unit(faces, tmp_path, monkeypatch, where, resumed_at):
    """Killed anywhere inside the checkpoint of step 6 (in the middle of the tensor write, between the tensor
    file and its record, in the middle of the record write, or after both, before the prior is exported),
    the resumed run starts from a consistent step, removes the interrupted write's temporary files, and
    ends with the weights of an uninterrupted run."""
    import priors.train as train_mod

    def cfg(name):
        return TrainConfig(data=str(faces), out=str(tmp_path / name), steps=9, ckpt_every=3, **SMALL)

    full = Trainer(cfg("full"), progress=False)
    full.run()
    real_save, real_write, real_export = train_mod.save_tensors, train_mod.atomic_write_text, Trainer.export

    def partial(path, data: bytes):
        (path.parent / f".{path.name}.x7kq{path.suffix}").write_bytes(data)
        raise Killed

    def save(tensors, path):
        if path.name == "ckpt-00000006.safetensors" and where == "tensor-write":
            partial(path, b"\x00" * 100)
        real_save(tensors, path)
        if path.name == "ckpt-00000006.safetensors" and where == "between":
            raise Killed

    def write(path, text):
        if path.name == "checkpoint.json" and '"step": 6,' in text and where == "record-write":
            partial(path, text[:50].encode())
        real_write(path, text)

    def export(self):
        if self.step == 6 and where == "after-both":
            raise Killed
        real_export(self)

    with monkeypatch.context() as m:
        m.setattr(train_mod, "save_tensors", save)
        m.setattr(train_mod, "atomic_write_text", write)
        m.setattr(Trainer, "export", export)
        with pytest.raises(Killed):
            Trainer(cfg("split"), progress=False).run()
    again = Trainer(cfg("split"), resume=True, progress=False)
    assert again.step == resumed_at
    assert not [p.name for p in (tmp_path / "split").iterdir() if p.name.startswith(".")]
    again.run()
    for (k, v), w in zip(full.ema.state_dict().items(), again.ema.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_torchrun_two_cpu_processes(faces, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "posterior.cli",
           "train-prior", "--data", str(faces), "--out", str(out), "--steps", "4", "--ckpt-every", "2",
           "--width", "8", "--batch-size", "8", "--sample-every", "0", "--threads", "1", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads((out / "prior.json").read_text())
    assert record["training"]["steps"] == 4
    assert record["training"]["batch_size"] == 16  # 2 processes x 8
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 4


def test_train_function_reports_speed(faces, tmp_path):
    res = train(TrainConfig(data=str(faces), out=str(tmp_path / "s"), steps=2, ckpt_every=2, **SMALL), progress=False)
    assert res["steps"] == 2 and res["steps_per_s"] > 0
    assert Path(tmp_path / "s" / "prior.safetensors").is_file()


def test_likelihood_times_follow_g2_over_std2():
    """``t ~ q(t) ~ g^2 / std^2``: for the VP SDE ``g^2 / std^2 = d/dt logit(std^2)``, so the CDF is closed-form."""
    from scipy.stats import kstest

    from priors.train import training_times

    sde = VPSDE()
    g = torch.Generator().manual_seed(0)
    t = training_times(sde, 4000, g, torch.float64, likelihood_fraction=0.5)
    uniform, weighted = t[:2000].numpy(), t[2000:].numpy()

    def logit_var(s):
        v = sde.coefficients(torch.as_tensor(s, dtype=torch.float64))[1].numpy() ** 2
        return np.log(v / (1 - v))

    lo, hi = logit_var(sde.eps), logit_var(sde.T)
    assert kstest(weighted, lambda s: (logit_var(s) - lo) / (hi - lo)).pvalue > 1e-3
    assert kstest(uniform, "uniform", args=(sde.eps, sde.T - sde.eps)).pvalue > 1e-3
    assert kstest(weighted, "uniform", args=(sde.eps, sde.T - sde.eps)).pvalue < 1e-6  # they differ


def test_image_weights_are_capped_inverse_alpha_squared():
    """VP: ``1 + std^2/alpha^2 = 1/alpha^2 = exp(int_0^t beta)``; each image's loss is scaled by ``w / mean(w)``."""
    from priors.train import training_times

    sde = VPSDE()
    z0 = torch.randn(64, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def zero_net(x, t):
        return torch.zeros_like(x)

    plain = dsm_loss(zero_net, sde, z0, torch.Generator().manual_seed(3))
    weighted = dsm_loss(zero_net, sde, z0, torch.Generator().manual_seed(3), image_weight_cap=100.0)
    assert torch.equal(dsm_loss(zero_net, sde, z0, torch.Generator().manual_seed(3), image_weight_cap=1.0), plain)
    t = training_times(sde, 64, torch.Generator().manual_seed(3), torch.float64).numpy()
    w = np.minimum(np.exp(0.1 * t + 0.5 * 19.9 * t**2), 100.0)
    assert 0 < (w < 100).sum() < 64  # both sides of the cap are exercised
    np.testing.assert_allclose(weighted.numpy(), plain.numpy() * w / w.mean(), rtol=1e-10)


def test_antithetic_pairs_are_unbiased_and_cut_the_gradient_variance_near_the_optimum(faces, tmp_path):
    """``antithetic``: each image at ``(t, z)`` and ``(t, -z)``. Model: ``eps = A std x / (alpha^2 lam + std^2)``
    on ``N(0, lam I)`` data, exact at ``A = I``. There the expected gradient in ``A`` is zero either way and
    the pairs remove its part odd in ``z`` (dominant at small ``t``), so its variance falls at equal cost
    (measured 1.42x here; 6.6x for the faces16 U-Net, docs/priors.md)."""
    sde = VPSDE()
    lam = 0.01

    def grads(antithetic):
        out = []
        for k in range(300):
            g = torch.Generator().manual_seed(k)
            x = (lam**0.5) * torch.randn(64, 1, 4, 4, dtype=torch.float64, generator=g)
            a = torch.eye(16, dtype=torch.float64).requires_grad_(True)

            def net(xt, t, a=a):
                alpha, std = sde.coefficients(t)
                return ((xt.flatten(1) * (std / (alpha**2 * lam + std**2))[:, None]) @ a.T).reshape(xt.shape)

            loss = dsm_loss(net, sde, x[:32] if antithetic else x, g, likelihood_fraction=1.0,
                            antithetic=antithetic)
            assert loss.shape == (64,)
            (da,) = torch.autograd.grad(loss.mean(), a)
            out.append(da.flatten().numpy())
        return np.array(out)

    plain, anti = grads(False), grads(True)
    se = np.hypot(plain.std(0), anti.std(0)) / np.sqrt(300)
    assert np.mean(np.abs(plain.mean(0) - anti.mean(0)) / se) < 1.0  # ~0.8 for equal means
    assert np.mean(np.abs(anti.mean(0)) / (anti.std(0) / np.sqrt(300))) < 1.0  # zero at the optimum
    assert anti.var(0).sum() < plain.var(0).sum() / 1.25, (anti.var(0).sum(), plain.var(0).sum())
    # the pairs share the image and t and negate the noise: a zero model's loss is |z|^2, equal within a pair
    zero = dsm_loss(lambda xt, t: torch.zeros_like(xt), sde, torch.randn(8, 1, 4, 4),
                    torch.Generator().manual_seed(2), antithetic=True)
    assert torch.equal(zero[:8], zero[8:])
    # in the trainer: half as many images per step, same evaluations; an odd batch is refused
    cfg = TrainConfig(data=str(faces), out=str(tmp_path / "a"), steps=2, ckpt_every=1000, antithetic=True, **SMALL)
    trainer = Trainer(cfg, progress=False)
    assert np.isfinite(trainer.train_step())
    with pytest.raises(InterferoError, match="even batch size"):
        TrainConfig(data=str(faces), out=str(tmp_path / "b"), antithetic=True, **(SMALL | {"batch_size": 15}))


def test_cosine_schedule_and_bad_settings(faces, tmp_path):
    cfg = TrainConfig(data=str(faces), out=str(tmp_path / "c"), steps=110, ckpt_every=1000, lr_schedule="cosine",
                      lr_min=1e-4, **SMALL)
    trainer = Trainer(cfg, progress=False)
    lrs = []
    for step in (0, 9, 10, 60, 109, 110):
        trainer.step = step
        lrs.append(trainer._lr())
    assert lrs[0] == pytest.approx(2e-4) and lrs[1] == pytest.approx(2e-3) and lrs[2] == pytest.approx(2e-3)
    assert lrs[3] == pytest.approx(1e-4 + 0.5 * 1.9e-3 * (1 + np.cos(np.pi * 0.5)))
    assert lrs[4] == pytest.approx(1e-4, rel=1e-2) and lrs[5] == pytest.approx(1e-4)
    for bad, msg in (({"lr_schedule": "step"}, "schedule"), ({"likelihood_fraction": 1.5}, "likelihood fraction"),
                     ({"lr_min": 1.0}, "lr_min"), ({"image_weight_cap": 0.5}, "image weight cap")):
        with pytest.raises(InterferoError, match=msg):
            TrainConfig(data=str(faces), out=str(tmp_path / "x"), **SMALL | bad)


def test_fine_tuning_starts_from_a_prior(faces, tmp_path):
    base = TrainConfig(data=str(faces), out=str(tmp_path / "base"), steps=5, ckpt_every=5, **SMALL)
    Trainer(base, progress=False).run()
    net, record = load_prior_network(tmp_path / "base" / "prior")
    # another width on the command line: the architecture of the starting prior wins
    cfg = TrainConfig(data=str(faces), out=str(tmp_path / "ft"), steps=3, ckpt_every=3,
                      init=str(tmp_path / "base" / "prior"), likelihood_fraction=1.0, **SMALL | {"width": 16})
    ft = Trainer(cfg, progress=False)
    assert ft.cfg.width == 8 and ft.transform == record["transform"]
    for k, v in net.state_dict().items():
        assert torch.equal(ft.net.state_dict()[k], v) and torch.equal(ft.ema.module.state_dict()[k], v), k
    ft.run()
    changed = any(not torch.equal(ft.net.state_dict()[k], v) for k, v in net.state_dict().items())
    assert changed
    assert json.loads((tmp_path / "ft" / "prior.json").read_text())["training"]["config"]["init"] == cfg.init
    # a prior for other images cannot start the run
    other = tmp_path / "o.h5"
    write_dataset(other, make_dataset("face-gaussian", 32, 8, seed=0))
    with pytest.raises(InterferoError, match="16 px images cannot start training on 8 px"):
        Trainer(TrainConfig(data=str(other), out=str(tmp_path / "o"), init=cfg.init, **SMALL), progress=False)


def test_cli_fine_tuning_flags(faces, tmp_path, capsys):
    args = ["train-prior", "--data", str(faces), "--steps", "2", "--ckpt-every", "2", "--batch-size", "8",
            "--sample-every", "0", "--threads", "1", "--no-progress", "--lr-schedule", "cosine",
            "--likelihood-fraction", "0.5", "--image-weight-cap", "50"]
    assert main([*args, "--out", str(tmp_path / "a"), "--width", "8", "--no-output-norm"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--init", str(tmp_path / "a" / "prior"),
                 "--global-rank", "3"]) == 0
    record = json.loads((tmp_path / "b" / "prior.json").read_text())
    # the starting prior's head (no output GroupNorm) is kept and reloads as such
    assert record["network"]["output_norm"] is False
    assert isinstance(load_prior_network(tmp_path / "b" / "prior")[0].norm_out, torch.nn.Identity)
    assert record["training"]["config"]["lr_schedule"] == "cosine" and record["network"]["width"] == 8
    assert record["training"]["config"]["image_weight_cap"] == 50.0
    assert record["network"]["global_rank"] == 3  # a branch added to the starting prior
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "c"), "--init", "no-such-prior"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown prior 'no-such-prior'" in err and len(err.splitlines()) == 1


def test_global_linear_represents_the_gaussian_noise_prediction():
    """With ``P_in = U^T``, ``P_out = U`` and the gains of its docstring, the branch is the exact noise
    prediction ``-std * score`` of diffused Gaussian data (closed form of :class:`GaussianScore`)."""
    torch.manual_seed(0)
    d, sde = 12, VPSDE()
    a = torch.randn(d, d, dtype=torch.float64)
    mean, cov = torch.randn(d, dtype=torch.float64), a @ a.T / d + 0.05 * torch.eye(d, dtype=torch.float64)
    exact = GaussianScore(mean.reshape(1, 3, 4), cov, sde)
    branch = GlobalLinear(d, d, temb=5).double()
    lam, u = torch.linalg.eigh(cov)
    x = torch.randn(6, 1, 3, 4, dtype=torch.float64)
    for t in (0.01, 0.3, 0.9):
        alpha, std = (float(v) for v in sde.coefficients(torch.tensor(t, dtype=torch.float64)))
        g = std / (alpha**2 * lam + std**2)
        with torch.no_grad():
            branch.proj_in.weight.copy_(u.T)
            branch.proj_out.weight.copy_(u)
            branch.gain.weight.zero_()
            branch.gain.bias.copy_(torch.cat([g, -alpha * g * (u.T @ mean)]))
            got = branch(x, torch.zeros(6, 5, dtype=torch.float64))
        want = -std * exact(x, torch.full((6,), t, dtype=torch.float64))
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), t


def test_fine_tuning_can_add_a_global_branch(faces, tmp_path):
    """``--global-rank`` on a fine-tune adds a branch that starts at zero: the network's output is the
    starting prior's until training moves it; the rank is recorded and reloads."""
    base = TrainConfig(data=str(faces), out=str(tmp_path / "base"), steps=2, ckpt_every=2, **SMALL)
    train(base, progress=False)
    net, _ = load_prior_network(tmp_path / "base" / "prior")
    assert net.global_linear is None
    net.to(memory_format=torch.contiguous_format)  # the trainer's layout: the same sums in the same order
    cfg = TrainConfig(data=str(faces), out=str(tmp_path / "gl"), steps=3, ckpt_every=3, global_rank=7,
                      init=str(tmp_path / "base" / "prior"), **SMALL)
    ft = Trainer(cfg, progress=False)
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0.01, 0.1, 0.5, 1.0])
    with torch.no_grad():
        assert torch.equal(ft.net(x, t), net(x, t))
    ft.run()
    record = json.loads((tmp_path / "gl" / "prior.json").read_text())
    assert record["network"]["global_rank"] == 7
    reloaded, _ = load_prior_network(tmp_path / "gl" / "prior")
    assert reloaded.global_linear.proj_in.weight.shape == (7, 256)
    assert reloaded.global_linear.proj_out.weight.abs().max() > 0  # trained away from its zero start
    with pytest.raises(InterferoError, match="global rank must be >= 0"):
        UNet(16, global_rank=-1)
    with pytest.raises(InterferoError, match="global rank must be >= 0"):
        TrainConfig(data=str(faces), out=str(tmp_path / "bad"), global_rank=-2)


def test_record_keeps_the_black_holes_floor_law(tmp_path):
    """A prior trained on ``make-dataset blackholes --law extended`` records the law, so
    ``priors.ood.training_draws`` regenerates the right distribution."""
    data = tmp_path / "bh.h5"
    write_dataset(data, make_dataset("blackholes", 16, 16, seed=0, law="extended"))
    train(TrainConfig(data=str(data), out=str(tmp_path / "r"), steps=1, ckpt_every=1, **SMALL), progress=False)
    record = json.loads((tmp_path / "r" / "prior.json").read_text())
    assert record["training"]["data"]["law"] == "extended"
    assert record["training"]["data"]["kind"] == "blackholes"


def test_validate_logp_script_writes_its_figures_and_retrains_for_another_network(tmp_path):
    """scripts/validate_logp.py at toy size: the JSON the issue names, and a run asking for another
    ``--global-rank`` or ``--n-train`` trains a new network instead of resuming the old checkpoint."""
    repo = Path(__file__).resolve().parents[1]
    base = [sys.executable, "scripts/validate_logp.py", "--out", str(tmp_path), "--steps", "2", "--batch-size", "8",
            "--width", "8", "--n", "3", "--n-grad", "0", "--divergence", "hutchinson", "--probes", "2",
            "--rtol", "1e-2", "--threads", "1"]
    for rank in (0, 5):
        out = tmp_path / f"figures-{rank}.json"
        proc = subprocess.run([*base, "--n-train", "400", "--global-rank", str(rank), "--json", str(out)], cwd=repo,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        figures = json.loads(out.read_text())
        assert {"r2_in", "r2_ood", "median_cos_dist_grad_vs_score"} <= set(figures)
        assert np.isfinite(figures["r2_in"]) and figures["n"] == 3
        # two probes: the Hutchinson noise is measured and reported beside the R^2 it lowers
        assert figures["probe_sd_in_nats"] > 0 and "r2_in_without_probe_noise" in figures
        # where the score is off: its gain per covariance subspace (157 floor + 99 other directions)
        gains = figures["score_gain"]
        assert len(gains["t"]) == len(gains["floor_gain"]) == len(gains["top_gain"]) > 5
        assert np.all(np.isfinite(gains["floor_gain"])) and figures["residual_var_in_nats2"] >= 0
        record = json.loads((tmp_path / "run" / "prior.json").read_text())
        assert record["network"]["global_rank"] == rank
    # other training draws: a new run as well, not a resume of the checkpoint made on the first ones
    proc = subprocess.run([*base, "--n-train", "500", "--global-rank", "5"], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "prior.json").read_text())["training"]["data"]["n_images"] == 500
    # bad input is one line and exit status 2 (here: a Gaussian fitted to fewer draws than pixels)
    proc = subprocess.run([*base, "--n-train", "64"], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("validate_logp: error:"), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1
