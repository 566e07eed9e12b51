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

import hashlib
import json
import math
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


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes (hex): how a record names the exact tensor file it goes with."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    record = {"format": FORMAT, "version": 1, "network": net.config, **record,
              "weights_sha256": file_sha256(stem.with_suffix(".safetensors"))}
    atomic_write_text(stem.with_suffix(".json"), json.dumps(record, indent=2))


def read_checkpoint_json(path, fields: dict[str, type], what: str) -> dict | None:
    """A checkpoint's JSON record at ``path`` (None if there is none), with a one-line error naming ``what``
    when it is not JSON, not an object, lacks one of ``fields`` (name -> type; ``bool`` is not an ``int``)
    or names a tensor ``file`` outside its folder."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InterferoError(f"{path}: corrupted {what} ({err})") from None
    if not isinstance(record, dict):
        raise InterferoError(f"{path}: corrupted {what} (not an object)")
    for key, kind in fields.items():
        value = record.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InterferoError(f"{path}: corrupted {what} ({key!r} missing or of the wrong type)")
    if "file" in record and Path(record["file"]).name != record["file"]:
        raise InterferoError(f"{path}: corrupted {what} (its tensor file lies outside the folder)")
    return record


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
    check_record_schema(record, path)
    return record


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_record_schema(record: dict, path) -> None:
    """Types and ranges of a prior record's fields: a one-line error naming the field, never a traceback
    deep in the network's constructor."""
    if not (_is_int(record["image_size"]) and record["image_size"] >= 4):
        raise InterferoError(f"{path}: 'image_size' must be an integer >= 4, got {record['image_size']!r}")
    if not (_is_int(record.get("channels", 1)) and record.get("channels", 1) >= 1):
        raise InterferoError(f"{path}: 'channels' must be an integer >= 1, got {record.get('channels')!r}")
    fov = record["fov_uas"]
    if fov is not None and not (_is_number(fov) and fov >= 0):
        raise InterferoError(f"{path}: 'fov_uas' must be a number >= 0 (0 or null: not a sky image), got {fov!r}")
    tr = record["transform"]
    if not (isinstance(tr, dict) and _is_number(tr.get("shift")) and _is_number(tr.get("scale"))
            and tr["scale"] > 0):
        raise InterferoError(f"{path}: 'transform' must hold a finite 'shift' and a finite 'scale' > 0, got {tr!r}")
    net = record["network"]
    if not isinstance(net, dict):
        raise InterferoError(f"{path}: 'network' must be an object of U-Net settings")
    for key in ("image_size", "channels", "width", "num_res_blocks", "global_rank"):
        if key in net and not (_is_int(net[key]) and net[key] >= (0 if key == "global_rank" else 1)):
            raise InterferoError(f"{path}: network {key!r} must be a positive integer, got {net[key]!r}")
    if net.get("image_size", record["image_size"]) != record["image_size"]:
        raise InterferoError(f"{path}: network image_size {net['image_size']} differs from the record's"
                             f" {record['image_size']}")
    for key in ("channel_mult", "attn_resolutions"):
        if key in net and not (isinstance(net[key], list) and all(_is_int(m) and m >= 1 for m in net[key])):
            raise InterferoError(f"{path}: network {key!r} must be a list of positive integers, got {net[key]!r}")
    if not isinstance(record["sde"], dict):
        raise InterferoError(f"{path}: 'sde' must be an object of SDE settings")


def load_prior_network(stem, expect_image_size: int | None = None) -> tuple[UNet, dict]:
    """The network (eval mode, float32, weights frozen, in the channels-last memory format) and the record of a
    prior file pair. Channels-last is oneDNN's layout for convolutions: on a CPU a DPI step with the ELBO
    prior runs 6-8% faster than with contiguous weights (two cores and one, batch 4), at the same values to
    float rounding (``benchmarks/posterior.py``)."""
    record = read_record(stem)
    size = int(record["image_size"])
    if expect_image_size is not None and size != expect_image_size:
        n = expect_image_size
        raise InterferoError(f"prior {Path(stem).name} is for {size}x{size} images, not {n}x{n}")
    try:
        net = UNet(**record["network"])
    except (TypeError, ValueError) as err:
        raise InterferoError(f"{stem}: bad network settings ({err})") from None
    wpath = Path(stem).with_suffix(".safetensors")
    if "weights_sha256" in record and wpath.is_file() and file_sha256(wpath) != record["weights_sha256"]:
        raise InterferoError(f"{wpath}: the weights do not match {Path(stem).name}.json (SHA-256; an interrupted"
                             " write or a copied file?)")
    state = load_tensors(wpath)
    check_weights(state, Path(stem).with_suffix(".safetensors"))
    load_state(net, state, str(stem))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net.to(memory_format=torch.channels_last)
    sde_from_config(record["sde"])  # validates
    return net, record


def check_weights(state: dict[str, torch.Tensor], path) -> None:
    """Network weights are float32 and finite (a NaN weight would give NaN scores and images)."""
    for k, v in state.items():
        if v.dtype != torch.float32:
            raise InterferoError(f"{path}: weight {k!r} is {str(v.dtype).replace('torch.', '')}, expected float32")
        if not bool(torch.isfinite(v).all()):
            raise InterferoError(f"{path}: weight {k!r} has NaN or infinite values")


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
