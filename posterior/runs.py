"""What the sampling baselines share: settings checks, independent batched runs, non-finite stops.

Each sampling method (:mod:`posterior.dps`, :mod:`posterior.ald`, :mod:`posterior.sdedit`) draws
``n_samples`` independent runs in batches of ``batch``, seeded so that a CPU run is reproducible,
and stops with a one-line error naming the step at which a state became NaN or infinite.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, fields

import numpy as np
import torch
from tqdm.auto import tqdm

from interfero.errors import InterferoError
from interfero.validation import check_memory

from .summary import Posterior, summarize


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise InterferoError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value}")


def check_count(name: str, value: int, minimum: int = 1) -> None:
    if int(value) != value or value < minimum:
        raise InterferoError(f"{name} must be an integer >= {minimum}, got {value}")


def check_finite(x: torch.Tensor, method: str, step: int, t: float | None = None) -> None:
    """Stops a sampler whose state has NaN or infinite values, naming the step (and time)."""
    if not bool(torch.all(torch.isfinite(x))):
        at = f" (t = {t:.4g})" if t is not None else ""
        raise InterferoError(f"{method}: non-finite values at step {step}{at}; try a smaller step size")


def batched_samples(draw: Callable[[int, torch.Generator], torch.Tensor], n: int, batch: int, seed: int,
                    desc: str, progress: bool = False) -> np.ndarray:
    """``n`` images from ``draw(m, generator) -> (m, C, H, W)`` in batches of ``batch``; float64 numpy."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    out = []
    for start in tqdm(range(0, n, batch), disable=not progress, desc=desc):
        out.append(draw(min(batch, n - start), g).detach().double().cpu().numpy())
    return np.concatenate(out)


def sampled_posterior(method: str, config, draw, image_shape: tuple[int, ...], progress: bool = False) -> Posterior:
    """The :class:`Posterior` of ``config.n_samples`` independent runs of ``draw`` (timed), refused up front
    when the samples of ``image_shape`` would not fit in memory."""
    check_memory(32.0 * config.n_samples * math.prod(image_shape), f"{config.n_samples} {method} samples")
    t0 = time.perf_counter()
    x = batched_samples(draw, config.n_samples, config.batch, config.seed, method, progress)
    seconds = time.perf_counter() - t0
    diag = {"method": method, "config": asdict(config), "seconds": seconds,
            "seconds_per_sample": seconds / config.n_samples}
    return summarize(x, diagnostics=diag)


def config_from_options(cls, options: dict | None):
    """A method's settings dataclass from ``{name: value}`` (CLI ``--opt name=value``); unknown names and
    values that do not parse as the field's type are one-line errors."""
    options = dict(options or {})
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in options.items():
        name = key.replace("-", "_")
        if name not in known:
            raise InterferoError(f"unknown setting {key!r} for {cls.__name__} (choose from {', '.join(known)})")
        kind = type(getattr(cls(), name))
        if isinstance(value, str):
            try:
                if kind is bool:
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    value = value.lower() in ("true", "1", "yes")
                elif kind is int:
                    value = int(value)
                elif kind is float:
                    value = float(value)
            except ValueError:
                raise InterferoError(f"setting {key}: expected a {kind.__name__}, got {value!r}") from None
        kwargs[name] = value
    cfg = cls(**kwargs)
    cfg.validate()
    return cfg
