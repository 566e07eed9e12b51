"""Shipped score priors, loaded by name with no download.

``default`` is ``bh32lnflux`` (black holes, 32x32 over 160 uas: ``bh32disk``
fine-tuned on the ``disk-lnflux`` law, the GRMHD-like ``disk`` law with a
log-normal total flux); ``bh32disk`` (``bh32`` fine-tuned on the ``disk``
law) and ``bh32``, the v1-law prior both started from, stay loadable by name;
``bh64`` when its weights are shipped. A path to a prior file pair (``NAME.json`` +
``NAME.safetensors``, as written by ``interfero train-prior``) works too.
"""

from __future__ import annotations

import json
from pathlib import Path

from interfero.datafiles import data_path
from interfero.errors import InterferoError

from .checkpoint import load_prior_network
from .networks import NoisePredictionScore
from .score_prior import ScorePrior
from .sde import sde_from_config

ALIASES = {"default": "bh32lnflux"}


def shipped_priors() -> list[str]:
    folder = Path(data_path("weights"))
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def prior_path(name: str) -> Path:
    """The file stem of a prior given by name (``default``, ``bh32lnflux``, ``bh32disk``, ``bh32``, ...) or path."""
    name = ALIASES.get(name, name)
    candidate = Path(name)
    for stem in (candidate.with_suffix(""), candidate):
        if stem.with_suffix(".json").is_file():
            return stem.with_suffix("")
    shipped = Path(data_path("weights")) / name
    if shipped.with_suffix(".json").is_file():
        return shipped
    raise InterferoError(f"unknown prior {name!r} (shipped: {', '.join(shipped_priors()) or 'none'}; or a path to"
                         " NAME.json + NAME.safetensors)")


def training_law(name: str = "default") -> str:
    """The black-hole parameter law (:data:`priors.datasets.blackholes.LAWS`) a prior was trained on, from its
    record (``training.data.law``); a prior trained on other images is an error."""
    stem = prior_path(name)
    law = (json.loads(stem.with_suffix(".json").read_text()).get("training", {}).get("data") or {}).get("law")
    if not isinstance(law, str):
        raise InterferoError(f"prior {stem.name!r} records no black-hole training law")
    return law


def load_prior(name: str = "default", method: str = "elbo", expect_image_size: int | None = None,
               **kwargs) -> ScorePrior:
    """A :class:`ScorePrior` from a shipped or trained prior file pair."""
    stem = prior_path(name)
    net, record = load_prior_network(stem, expect_image_size)
    sde = sde_from_config(record["sde"])
    size, ch = int(record["image_size"]), int(record.get("channels", 1))
    tr = record["transform"]
    return ScorePrior(NoisePredictionScore(net, sde), sde, (ch, size, size), shift=tr["shift"], scale=tr["scale"],
                      method=method, fov_uas=record.get("fov_uas") or None, name=stem.name,
                      training_data=record.get("training", {}).get("data"), **kwargs)
