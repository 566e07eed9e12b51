"""Deep Probabilistic Imaging: a normalizing flow ``q(x)`` fitted to ``p(x | y)`` by reverse KL.

The loss per step is the Monte-Carlo estimate, over a batch ``x ~ q``, of

    E_q[ -w_data * log p(y | x) - w_prior * log p(x) + log q(x) ]

(the negative ELBO of the data up to ``log p(y)``), with ``log p(y | x)`` the
operator's log-likelihood (its per-product weights and optional total-flux
term included) and ``log p(x)`` any :class:`priors.base.Prior`. With a
score-based prior the ELBO surrogate is the default (a lower bound of
``log p(x)``, so the objective is an upper bound of the exact one); the exact
PF-ODE prior is selectable, and so is the score at ``eps`` alone (method
``score``: the same reparameterised gradient as ``log p_eps`` as far as the
network has learnt it, but no value, so the loss then leaves the prior out).

Annealing (``anneal_steps > 0``): ``w_data`` ramps linearly from
``anneal_start`` to 1 over the first ``anneal_steps`` steps, which helps the
flow find the data-consistent region of closure-only problems before the
prior pulls it in. It changes the target during the ramp, so it is off by
default; after the ramp the target is the posterior.

Renyi objective (``alpha != 1``; alpha-DPI): the loss is the negative variational Renyi bound
(Li & Turner 2016) over the batch's log-weights ``l_i = w log p(y|x_i) + log p(x_i) - log q(x_i)``,

    -1 / (1 - alpha) * log( mean_i exp((1 - alpha) l_i) ),

which is the reverse-KL loss above as ``alpha -> 1``, the importance-weighted bound (IWAE) at ``alpha = 0``,
and in between a reverse-KL gradient whose samples are weighted by ``w_i^(1 - alpha)`` (normalised): samples
where ``q`` is too small for the target count more, which widens ``q``. ``alpha`` must be >= 0.

Mass-covering refinement (``refine_steps > 0``): the last ``refine_steps``
steps minimise instead the self-normalised importance-weighted forward KL,
``-sum_i w_i log q(x_i)`` with ``x_i ~ q`` and ``w_i ∝ p(y|x_i) p(x_i) / q(x_i)``
(weights detached). Reverse KL cannot move mass between separated modes (its
reparameterised gradient vanishes inside a mode where ``q ∝ p``, whatever the
mode's weight); the weights can. It needs ``q`` to cover every mode already
(anneal first) and an effective sample size ``1 / sum w_i^2`` well above 1,
which holds in low dimensions only: the history records it (``ess``).

Steps with a non-finite loss or gradient are skipped (counted in
``skipped``) and never written to a checkpoint. Once the flow itself overflows,
every later step would be skipped, so after ``max_skips_in_a_row`` skipped steps in
a row the flow and optimizer go back to the last good state (kept in memory every
``snapshot_every`` good steps) and the step size is halved (``rollbacks``); after
``max_rollbacks`` of them the fit stops with an error instead of writing a
meaningless image. Checkpoints (flow, optimizer,
step, RNG state, loss history) are written atomically every ``ckpt_every``
steps when ``out`` is given, and ``resume=True`` continues from the last one.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from interfero.errors import InterferoError
from interfero.io import atomic_write_text
from priors.base import Prior
from priors.checkpoint import (
    file_sha256,
    load_optimizer,
    load_state,
    load_tensors,
    optimizer_tensors,
    read_checkpoint_json,
    save_tensors,
)

from .flows import Flow
from .problem import InverseProblem
from .summary import Posterior, summarize

CHECKPOINT = "dpi-checkpoint"


@dataclass
class DPIConfig:
    """Settings of a DPI fit.

    steps: optimisation steps; batch: flow samples per step; lr: Adam step size;
    grad_clip: max gradient norm; data_weight / prior_weight: multipliers of the
    two log-densities (1 = the posterior); anneal_steps / anneal_start: linear
    ramp of the data weight (0 = off); alpha: Renyi order of the objective (1 = reverse
    KL, 0 = importance-weighted bound; module docstring); refine_steps: final steps of
    importance-weighted forward KL (0 = off); n_samples: posterior samples drawn at
    the end; seed; ckpt_every: checkpoint period (steps, with ``out``);
    log_every: loss-history period; max_skips_in_a_row / max_rollbacks /
    snapshot_every: divergence recovery (see the module docstring).
    """

    steps: int = 2000
    batch: int = 32
    lr: float = 1e-3
    grad_clip: float = 1.0
    data_weight: float = 1.0
    prior_weight: float = 1.0
    anneal_steps: int = 0
    anneal_start: float = 0.01
    alpha: float = 1.0
    refine_steps: int = 0
    n_samples: int = 1024
    seed: int = 0
    ckpt_every: int = 200
    log_every: int = 10
    lr_decay: bool = True
    max_skips_in_a_row: int = 10
    max_rollbacks: int = 3
    snapshot_every: int = 10
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.steps < 1:
            raise InterferoError(f"number of DPI steps must be >= 1, got {self.steps}")
        if self.batch < 1 or self.n_samples < 1:
            raise InterferoError("batch size and number of samples must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InterferoError(f"learning rate must be > 0, got {self.lr}")
        if not 0 <= self.refine_steps <= self.steps:
            raise InterferoError(f"refine_steps must be >= 0 and <= steps, got {self.refine_steps}")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise InterferoError(f"DPI alpha (Renyi order) must be a finite number >= 0, got {self.alpha}")
        if self.anneal_steps < 0 or not 0 < self.anneal_start <= 1:
            raise InterferoError("annealing needs anneal_steps >= 0 and 0 < anneal_start <= 1")
        if self.max_skips_in_a_row < 1 or self.max_rollbacks < 0 or self.snapshot_every < 1:
            raise InterferoError("divergence recovery needs max_skips_in_a_row >= 1, max_rollbacks >= 0,"
                                 " snapshot_every >= 1")


DPITarget = InverseProblem  # DPI's target: the problem's unnormalised posterior (normflows' target API)


def renyi_loss(log_w: torch.Tensor, alpha: float) -> torch.Tensor:
    """The negative variational Renyi bound of order ``alpha`` from a batch of log-weights
    ``log p(x_i, y) - log q(x_i)``: ``-mean(log_w)`` (reverse KL) at ``alpha = 1``."""
    if alpha == 1.0:
        return -log_w.mean()
    a = 1.0 - alpha
    return -(torch.logsumexp(a * log_w, 0) - math.log(log_w.shape[0])) / a


def _data_weight(cfg: DPIConfig, step: int) -> float:
    if cfg.anneal_steps <= 0 or step >= cfg.anneal_steps:
        return cfg.data_weight
    frac = step / cfg.anneal_steps
    return cfg.data_weight * (cfg.anneal_start + (1 - cfg.anneal_start) * frac)


class DPI:
    """One DPI fit: ``DPI(flow, target, config, out).fit()`` then :meth:`posterior`."""

    def __init__(self, flow: Flow, target: DPITarget, config: DPIConfig, out: str | Path | None = None,
                 resume: bool = False, progress: bool = True, callback=None) -> None:
        config.validate()
        if getattr(target.prior, "normalised", None) == "gradient" and (config.alpha != 1.0 or config.refine_steps):
            raise InterferoError(f"prior {target.prior.name!r} gives only its gradient (method 'score'): the Renyi"
                                 " objective (alpha != 1) and the importance-weighted refinement need its values;"
                                 " use --prior-method elbo")
        self.flow, self.target, self.cfg = flow, target, config
        self.out = Path(out) if out is not None else None
        self.progress, self.callback = progress, callback
        torch.manual_seed(config.seed)
        self.opt = torch.optim.Adam(self.flow.parameters(), lr=config.lr)
        self.rollbacks = 0
        self.lr_scale = 1.0  # halved at each rollback
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.step = 0
        self.history: list[dict] = []
        self.skipped = 0
        self.seconds = 0.0
        if resume:
            self._resume()
        self._snapshot()

    def _lr_factor(self, step: int) -> float:
        """Cosine decay to 10% over the run (``lr_decay``), else constant; times ``lr_scale``."""
        if not self.cfg.lr_decay:
            return self.lr_scale
        return self.lr_scale * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, self.cfg.steps) / self.cfg.steps)))

    @property
    def device(self) -> torch.device:
        """Where the flow is, and so where the fit's steps run (the target must be there too)."""
        return next(self.flow.parameters()).device

    # -- divergence recovery ---------------------------------------------------------------------------------
    def _snapshot(self) -> None:
        """Keeps the current flow and optimizer state in memory (the state a rollback returns to)."""
        self._good = ({k: v.detach().clone() for k, v in self.flow.state_dict().items()},
                      copy.deepcopy(self.opt.state_dict()))

    def _rollback(self) -> None:
        """Returns to the last good state with half the step size, or stops after ``max_rollbacks``."""
        if self.rollbacks >= self.cfg.max_rollbacks:
            raise InterferoError(
                f"DPI diverged: {self.cfg.max_skips_in_a_row} non-finite steps in a row at step {self.step} after"
                f" {self.rollbacks} rollbacks with smaller step sizes; try a smaller --lr (and the bounded"
                " --coupling-scale sigmoid, the default)")
        flow_state, opt_state = self._good
        self.flow.load_state_dict(flow_state)
        self.opt.load_state_dict(copy.deepcopy(opt_state))
        self.rollbacks += 1
        self.lr_scale *= 0.5
        for group in self.opt.param_groups:  # takes effect now, not at the next scheduler step
            group["lr"] = self.cfg.lr * self._lr_factor(self.step)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """One atomic unit: the tensors go to ``dpi-checkpoint-STEP.safetensors`` (a new file), then the
        record ``dpi-checkpoint.json``, which names that file and its SHA-256, replaces the old record; only
        then is the previous tensor file removed. Killed anywhere, the folder holds a record naming complete
        tensors of its own step."""
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        opt_tensors, opt_meta = optimizer_tensors(self.opt)
        tensors = {f"flow.{k}": v for k, v in self.flow.state_dict().items()} | opt_tensors
        tensors["rng"] = torch.get_rng_state()
        device = self.device
        if device.type == "cuda":  # the flow draws its samples from the GPU's generator
            tensors["rng_cuda"] = torch.cuda.get_rng_state(device)
        name = f"{CHECKPOINT}-{self.step:08d}.safetensors"
        save_tensors(tensors, self.out / name)
        record = {"file": name, "sha256": file_sha256(self.out / name), "step": self.step,
                  "config": asdict(self.cfg), "flow": self.flow.config, "optimizer": opt_meta,
                  "history": self.history, "skipped": self.skipped, "seconds": self.seconds,
                  "rollbacks": self.rollbacks, "lr_scale": self.lr_scale}
        atomic_write_text(self.out / f"{CHECKPOINT}.json", json.dumps(record))
        remove_stale_checkpoints(self.out, keep=name)

    def _resume(self) -> None:
        if self.out is None:
            raise InterferoError("resume needs an output directory")
        loaded = load_checkpoint(self.out, self.cfg.steps)
        remove_stale_checkpoints(self.out, keep=None if loaded is None else loaded[0]["file"])
        if loaded is None:
            return  # nothing to resume: a fresh start
        record, tensors = loaded
        if record["flow"] != self.flow.config:
            raise InterferoError(f"{self.out / (CHECKPOINT + '.json')}: checkpoint was made with another flow"
                                 f" ({record['flow']})")
        load_state(self.flow, {k[5:]: v for k, v in tensors.items() if k.startswith("flow.")},
                   str(self.out / record["file"]))
        load_optimizer(self.opt, tensors, record["optimizer"])
        torch.set_rng_state(tensors["rng"])
        if "rng_cuda" in tensors and self.device.type == "cuda":  # a fit checkpointed on a GPU, resumed on one
            torch.cuda.set_rng_state(tensors["rng_cuda"], self.device)
        self.step = int(record["step"])
        self.history = record.get("history", [])
        self.skipped = int(record.get("skipped", 0))
        self.seconds = float(record.get("seconds", 0.0))
        self.rollbacks = int(record.get("rollbacks", 0))
        self.lr_scale = float(record.get("lr_scale", 1.0))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor, last_epoch=self.step - 1)

    # -- optimisation ----------------------------------------------------------------------------------------
    def loss_terms(self, n: int) -> dict[str, torch.Tensor]:
        """``n`` flow samples and the terms of the objective. Samples with non-finite pixels (an overflowing
        flow) give NaN terms without reaching the prior or operator, so :meth:`fit` skips that step."""
        x, log_q = self.flow.sample(n)
        if not bool(torch.isfinite(x).all()):
            nan = torch.full_like(log_q, float("nan"))
            return {"x": x, "log_q": log_q, "log_lik": nan, "log_prior": nan}
        return {"x": x, "log_q": log_q, "log_lik": self.target.log_likelihood(x), "log_prior": self.target.log_prior(x)}

    def _log_target(self, terms: dict[str, torch.Tensor], w: float) -> torch.Tensor:
        """``w log p(y|x) + w_prior log p(x)`` of a batch: the (annealed) unnormalised log posterior."""
        return w * terms["log_lik"] + self.cfg.prior_weight * terms["log_prior"]

    def _forward_kl(self, w: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Self-normalised importance-weighted forward KL on one batch (see the module docstring)."""
        with torch.no_grad():
            terms = self.loss_terms(self.cfg.batch)
            weights = torch.softmax(self._log_target(terms, w) - terms["log_q"], 0)
        terms["ess"] = 1.0 / (weights**2).sum()
        # non-finite weights (from non-finite samples) make the loss non-finite: fit() skips the step
        return -(weights * self.flow.log_prob(terms["x"])).sum(), terms

    def fit(self) -> DPI:
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, desc="dpi", disable=not self.progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        seconds0 = self.seconds
        in_a_row = 0  # skipped steps since the last good one
        while self.step < cfg.steps:
            w = _data_weight(cfg, self.step)
            refining = self.step >= cfg.steps - cfg.refine_steps
            if refining:
                loss, terms = self._forward_kl(w)
            else:
                terms = self.loss_terms(cfg.batch)
                loss = renyi_loss(self._log_target(terms, w) - terms["log_q"], cfg.alpha)
            self.opt.zero_grad(set_to_none=True)
            ok = bool(torch.isfinite(loss))
            if ok:
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(self.flow.parameters(), cfg.grad_clip)
                ok = bool(torch.isfinite(norm))
            if ok:
                if self.step % cfg.snapshot_every == 0:
                    self._snapshot()  # these parameters just gave finite samples, loss and gradient
                self.opt.step()
                in_a_row = 0
            else:
                self.skipped += 1
                in_a_row += 1
                self.opt.zero_grad(set_to_none=True)
            self.sched.step()
            self.step += 1
            if in_a_row >= cfg.max_skips_in_a_row:
                self._rollback()
                in_a_row = 0
            self.seconds = seconds0 + time.perf_counter() - t0
            if ok and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                rec = {"step": self.step, "loss": loss.item(), "log_lik": terms["log_lik"].mean().item(),
                       "log_prior": terms["log_prior"].mean().item(), "log_q": terms["log_q"].mean().item(),
                       "data_weight": w, "seconds": self.seconds}
                if refining:
                    rec |= {"objective": "forward_kl", "ess": terms["ess"].item()}
                self.history.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4g}", skipped=self.skipped)
            if self.callback is not None:
                self.callback(self, terms)
            if self.out is not None and (self.step % cfg.ckpt_every == 0 or self.step == cfg.steps):
                self.save_checkpoint()
            bar.update(1)
        bar.close()
        if self.skipped == cfg.steps:
            raise InterferoError("every DPI step had a non-finite loss; check the data sigmas and the prior")
        return self

    @torch.no_grad()
    def sample(self, n: int, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` posterior samples and their ``log q``."""
        xs, lqs = [], []
        for start in range(0, n, chunk):
            x, lq = self.flow.sample(min(chunk, n - start))
            xs.append(x)
            lqs.append(lq)
        x, lq = torch.cat(xs), torch.cat(lqs)
        good = torch.isfinite(x.reshape(n, -1)).all(-1) & torch.isfinite(lq)
        if not bool(good.all()):
            raise InterferoError(f"{int((~good).sum())} of {n} flow samples are not finite; the fit diverged")
        return x, lq

    def posterior(self, n: int | None = None) -> Posterior:
        x, lq = self.sample(n or self.cfg.n_samples)
        diag = {"method": "dpi", "steps": self.step, "skipped_steps": self.skipped, "seconds": self.seconds,
                "history": self.history, "config": asdict(self.cfg), "flow": self.flow.config}
        return summarize(x.double().cpu().numpy(), log_q=lq.double().cpu().numpy(), diagnostics=diag)


def read_checkpoint_record(folder: str | Path) -> dict | None:
    """The JSON record (step, settings, history, tensor file, ...) of the DPI checkpoint in ``folder``,
    checked: its fields have their types and the tensor file it names exists with its recorded SHA-256.
    None if there is none."""
    path = Path(folder) / f"{CHECKPOINT}.json"
    fields = {"file": str, "sha256": str, "step": int, "config": dict, "flow": dict, "optimizer": dict}
    record = read_checkpoint_json(path, fields, "DPI checkpoint record")
    if record is None:
        return None
    if record["step"] < 0 or "param_groups" not in record["optimizer"]:
        raise InterferoError(f"{path}: corrupted DPI checkpoint record (bad step or optimizer state)")
    tpath = Path(folder) / record["file"]
    if not tpath.is_file():
        raise InterferoError(f"{path}: the checkpoint's tensor file {record['file']} is missing")
    if file_sha256(tpath) != record["sha256"]:
        raise InterferoError(f"{path}: the tensor file {record['file']} does not match the record (SHA-256)")
    return record


def load_checkpoint(folder: str | Path, steps: int | None = None) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """The checked record and tensors of the DPI checkpoint in ``folder`` (None without one): a one-line
    error when the random-generator state or the flow's weights are missing or malformed, or when the
    checkpoint is beyond ``steps``. ``reconstruct --resume`` calls it before writing anything."""
    record = read_checkpoint_record(folder)
    if record is None:
        return None
    tpath = Path(folder) / record["file"]
    tensors = load_tensors(tpath)
    rng, own = tensors.get("rng"), torch.get_rng_state()
    if rng is None or rng.dtype != own.dtype or rng.shape != own.shape:
        raise InterferoError(f"{tpath}: corrupted DPI checkpoint (random-generator state missing or of the wrong"
                             " size)")
    if not any(k.startswith("flow.") for k in tensors):
        raise InterferoError(f"{tpath}: corrupted DPI checkpoint (no flow weights)")
    if steps is not None and record["step"] > steps:
        raise InterferoError(f"{folder}: the checkpoint is at step {record['step']}, beyond --steps {steps}; give"
                             f" --steps >= {record['step']}, or --overwrite to start over")
    return record, tensors


def remove_stale_checkpoints(folder: Path, keep: str | None) -> None:
    """Deletes tensor files no record names and temporary files an interrupted write left behind."""
    for p in list(folder.glob(f"{CHECKPOINT}-*.safetensors")) + list(folder.glob(f".{CHECKPOINT}*")):
        if p.name != keep and p.is_file():
            p.unlink(missing_ok=True)


def fit_dpi(operator, y, prior: Prior, flow: Flow, config: DPIConfig | None = None, out=None, resume: bool = False,
            progress: bool = True) -> Posterior:
    """Fits ``flow`` to ``p(x | y)`` and returns its posterior summary (see :class:`DPI`)."""
    config = config or DPIConfig()
    target = DPITarget(operator, y, prior, config.data_weight, config.prior_weight)
    run = DPI(flow, target, config, out=out, resume=resume, progress=progress).fit()
    return run.posterior()


def exact_gaussian_posterior(a: np.ndarray, sigma: float | np.ndarray, y: np.ndarray, mean: np.ndarray,
                             cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``x | y`` for ``y = A x + n``, ``n ~ N(0, diag(sigma^2))``, ``x ~ N(mean, cov)``."""
    a = np.asarray(a, dtype=np.float64)
    w = 1.0 / np.broadcast_to(np.asarray(sigma, dtype=np.float64) ** 2, (a.shape[0],))
    prec = np.linalg.inv(cov) + a.T @ (w[:, None] * a)
    post_cov = np.linalg.inv(prec)
    post_cov = 0.5 * (post_cov + post_cov.T)
    post_mean = post_cov @ (np.linalg.solve(cov, mean) + a.T @ (w * y))
    return post_mean, post_cov
