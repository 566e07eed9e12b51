"""The method seam: every inference method runs on one :class:`posterior.problem.InverseProblem`.

``METHODS`` maps a method's name to its settings dataclass and its function
``(problem, config, progress) -> Posterior``:

| name | what | samples |
|---|---|---|
| ``dpi`` | normalizing-flow variational posterior (reverse KL), :mod:`posterior.dpi` | flow draws |
| ``dps`` | diffusion posterior sampling, :mod:`posterior.dps` | independent runs |
| ``ald`` | Score-ALD annealed Langevin, :mod:`posterior.ald` | independent chains |
| ``sdedit`` | pseudo-inverse, diffused to ``t0``, reverse SDE, :mod:`posterior.sdedit` | independent runs |
| ``pnp-dm`` | split Gibbs: MALA for the data, DDPM for the prior, :mod:`posterior.pnp_dm` | independent chains |
| ``pnp-admm`` | plug-and-play ADMM with the score denoiser, :mod:`posterior.pnp_admm` | point estimate |
| ``map`` | L-BFGS on ``log p(y|x) + log p(x)``, :mod:`posterior.map_estimate` | point estimate |

:func:`run_method` checks the name and settings (one-line errors) and runs it. ``reconstruct``
keeps its own DPI (warm start, checkpoints; :func:`posterior.reconstruct.fit_posterior`); the
``dpi`` entry here is the generic fit for small problems (``restore``, the validation scripts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interfero.errors import InterferoError

from .ald import ALDConfig, ald
from .dpi import DPI, DPIConfig
from .dps import DPSConfig, dps
from .flows import build_flow
from .map_estimate import MAPConfig, map_estimate
from .pnp_admm import PnPADMMConfig, pnp_admm
from .pnp_dm import PnPDMConfig, pnp_dm
from .problem import InverseProblem
from .runs import check_count, check_positive, config_from_options
from .sdedit import SDEditConfig, sdedit
from .summary import Posterior


@dataclass
class DPIMethodConfig:
    """DPI on a generic problem: a ``flow`` (``realnvp`` / ``glow``) of ``blocks`` couplings with ``hidden``
    units, ``layout`` conv (squeezed images; the default, as ``reconstruct``'s flow) or dense (every pixel
    sees every other; a dense Glow can represent any Gaussian exactly, for small images), started at the
    pseudo-inverse (``init="data"``) or the prior's mean image (``"prior"``, a 64-draw average for a score
    prior) with latent spread ``init_spread``; ``steps`` Adam steps of ``batch`` draws at ``lr``;
    ``n_samples`` posterior draws; seed."""

    steps: int = 600
    batch: int = 16
    lr: float = 1e-3
    flow: str = "realnvp"
    layout: str = "conv"
    blocks: int = 8
    hidden: int = 32
    init: str = "data"
    init_spread: float = 0.1
    n_samples: int = 256
    seed: int = 0

    def validate(self) -> None:
        check_count("DPI steps", self.steps)
        check_count("DPI batch", self.batch)
        check_positive("DPI lr", self.lr)
        check_count("DPI blocks", self.blocks)
        check_count("DPI hidden units", self.hidden)
        check_positive("DPI init_spread", self.init_spread)
        check_count("number of samples", self.n_samples, 2)
        if self.flow not in ("glow", "realnvp"):
            raise InterferoError(f"unknown flow {self.flow!r} (choose from glow, realnvp)")
        if self.layout not in ("dense", "conv", "auto"):
            raise InterferoError(f"unknown flow layout {self.layout!r} (choose from dense, conv, auto)")
        if self.init not in ("data", "prior"):
            raise InterferoError(f"unknown DPI init {self.init!r} (choose from data, prior)")


def dpi_method(problem: InverseProblem, config: DPIMethodConfig | None = None, progress: bool = False) -> Posterior:
    """DPI on ``problem`` with the flow of ``config`` (see :class:`DPIMethodConfig`)."""
    cfg = config or DPIMethodConfig()
    cfg.validate()
    if cfg.init == "data":
        init = problem.initial_image()[0]
    else:
        from priors.score_prior import ScorePrior

        p = problem.prior
        if isinstance(p, ScorePrior):
            init = p.sample(64, steps=200, generator=torch.Generator().manual_seed(cfg.seed)).mean(0)
        elif hasattr(p, "mean"):
            init = p.mean.float()
        else:
            raise InterferoError(f"DPI init 'prior' needs a prior with a mean image, not {p.name!r}")
    # the flow's pixel scale: the score prior's data scale (0.12 Jy/pixel for the black-hole priors), else 1
    scale = float(getattr(problem.prior, "scale", 1.0))
    flow = build_flow(problem.image_shape, kind=cfg.flow, layout=cfg.layout, blocks=cfg.blocks, hidden=cfg.hidden,
                      output="none", scale=scale, init=init.float(), init_spread=cfg.init_spread, seed=cfg.seed)
    dcfg = DPIConfig(steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, n_samples=cfg.n_samples, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    run = DPI(flow, problem, dcfg, progress=progress).fit()
    post = run.posterior()
    post.diagnostics |= {"config": vars(cfg).copy(), "seconds_per_sample": run.seconds / cfg.n_samples}
    return post


METHODS = {
    "dpi": (DPIMethodConfig, dpi_method),
    "dps": (DPSConfig, dps),
    "ald": (ALDConfig, ald),
    "sdedit": (SDEditConfig, sdedit),
    "pnp-admm": (PnPADMMConfig, pnp_admm),
    "pnp-dm": (PnPDMConfig, pnp_dm),
    "map": (MAPConfig, map_estimate),
}
SAMPLING_METHODS = ("dpi", "dps", "ald", "sdedit", "pnp-dm")  # methods whose posterior has samples and intervals


def method_config(name: str, options: dict | None = None):
    """The settings of method ``name`` with ``options`` applied (one-line errors for unknown names/values)."""
    if name not in METHODS:
        raise InterferoError(f"unknown method {name!r} (choose from {', '.join(METHODS)})")
    return config_from_options(METHODS[name][0], options)


def sample_jitter(name: str, options: dict | None, prior) -> float:
    """The per-pixel white std (Jy/pixel) by which the prior that method ``name``'s samples are drawn under
    smooths the score prior's training law: the method settings' own ``sample_jitter(prior)`` where they
    have one (``pnp-dm``: ``rho_min * scale``), else the prior's ``eps_std`` (the density ``p_eps``)."""
    own = getattr(method_config(name, options), "sample_jitter", None)
    return float(own(prior)) if own is not None else float(prior.eps_std)


def run_method(name: str, problem: InverseProblem, options: dict | object | None = None,
               progress: bool = False) -> Posterior:
    """Runs method ``name`` on ``problem`` with ``options`` (a dict of settings, or the settings object)."""
    cls = METHODS.get(name, (None,))[0]
    cfg = options if cls is not None and isinstance(options, cls) else method_config(name, options)
    cfg.validate()
    post = METHODS[name][1](problem, cfg, progress=progress)
    post.diagnostics["method"] = name
    return post
