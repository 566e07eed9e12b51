"""Locate files shipped in the project's ``data/`` folder (package ``interfero_data``)."""

from importlib import resources
from pathlib import Path


def data_path(*parts: str) -> Path:
    """Path of a shipped data file, e.g. ``data_path("arrays", "EHT2017.csv")``."""
    root = resources.files("interfero_data")
    return Path(str(root.joinpath(*parts)))
