"""Score-prior files: weights as safetensors plus a JSON record, loaded without pickle.

A *prior file pair* is ``NAME.safetensors`` (network weights, float32) and
``NAME.json``::

    {"format": "interfero-score-prior", "version": 1,
     "network": {UNet config}, "sde": {SDE config},
     "transform": {"scale": s, "shift": c},   # z = (x - c) / s, x in data units
     "image_size": 32, "channels": 1, "fov_uas": 160.0, "units": "Jy/pixel",
     "training": {...}}

Both are written atomically; loading checks the format, the architecture and
that every tensor is present with its expected shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from interfero.errors import InterferoError
from interfero.io import atomic_path, atomic_write_text

from .networks import UNet
from .sde import sde_from_config

FORMAT = "interfero-score-prior"


def save_tensors(tensors: dict[str, torch.Tensor], path) -> None:
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def load_tensors(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise InterferoError(f"checkpoint not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise InterferoError(f"{path}: corrupted or not a safetensors file ({str(err).splitlines()[0]})") from None


def write_prior(net: UNet, record: dict, stem) -> None:
    """Writes ``stem.safetensors`` then ``stem.json`` (the JSON last, so it only names complete weights)."""
    stem = Path(stem)
    save_tensors(net.state_dict(), stem.with_suffix(".safetensors"))
    record = {"format": FORMAT, "version": 1, "network": net.config, **record}
    atomic_write_text(stem.with_suffix(".json"), json.dumps(record, indent=2))


def read_record(stem) -> dict:
    stem = Path(stem)
    path = stem.with_suffix(".json")
    if not path.is_file():
        raise InterferoError(f"prior record not found: {path}")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InterferoError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InterferoError(f"{path}: not an interfero score-prior record")
    for key in ("network", "sde", "transform", "image_size", "fov_uas"):
        if key not in record:
            raise InterferoError(f"{path}: prior record lacks {key!r}")
    return record


def load_prior_network(stem, expect_image_size: int | None = None) -> tuple[UNet, dict]:
    """The network (eval mode, float32) and the record of a prior file pair."""
    record = read_record(stem)
    size = int(record["image_size"])
    if expect_image_size is not None and size != expect_image_size:
        n = expect_image_size
        raise InterferoError(f"prior {Path(stem).name} is for {size}x{size} images, not {n}x{n}")
    try:
        net = UNet(**record["network"])
    except (TypeError, ValueError) as err:
        raise InterferoError(f"{stem}: bad network settings ({err})") from None
    state = load_tensors(Path(stem).with_suffix(".safetensors"))
    load_state(net, state, str(stem))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    sde_from_config(record["sde"])  # validates
    return net, record


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict`` with one-line errors for missing, unexpected or wrongly shaped tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise InterferoError(
            f"{what}: weights do not match the architecture ({len(missing)} missing, {len(extra)} unexpected,"
            f" e.g. {(missing or extra)[0]!r})"
        )
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise InterferoError(
            f"{what}: weights do not match the architecture ({bad[0]!r} has shape {tuple(state[bad[0]].shape)},"
            f" expected {tuple(own[bad[0]].shape)})"
        )
    module.load_state_dict(state)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """An optimizer's state as flat tensors (for safetensors) and JSON-able metadata."""
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = torch.as_tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """Restores what :func:`optimizer_tensors` saved (other keys of ``tensors`` are ignored)."""
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
