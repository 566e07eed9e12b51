"""Bad input to the priors layer: clear one-line errors (exit status 2 from the CLI), nothing half-written."""

import json

import h5py
import numpy as np
import pytest
import torch

from interfero.errors import InterferoError
from posterior.cli import main
from priors.checkpoint import load_prior_network
from priors.classical import GaussianPrior, MEMPrior, TVPrior
from priors.datasets import make_dataset
from priors.datasets.store import load_dataset, save_dataset, write_dataset
from priors.pretrained import load_prior
from priors.train import TrainConfig, train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root / "faces.h5", make_dataset("face-gaussian", 64, 16, seed=0))
    train(TrainConfig(data=str(root / "faces.h5"), out=str(root / "run"), steps=2, width=8, batch_size=8,
                      sample_every=0, threads=1), progress=False)
    return root


def _one_line_exit_2(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    return err


def test_prior_for_another_image_size(tiny, capsys):
    with pytest.raises(InterferoError, match="16x16 images, not 32x32"):
        load_prior(str(tiny / "run" / "prior"), expect_image_size=32)


def test_prior_for_another_architecture(tiny, tmp_path):
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"p{suffix}").write_bytes((tiny / "run" / f"prior{suffix}").read_bytes())
    record = json.loads((tmp_path / "p.json").read_text())
    record["network"]["width"] = 16
    (tmp_path / "p.json").write_text(json.dumps(record))
    with pytest.raises(InterferoError, match="do not match the architecture"):
        load_prior_network(tmp_path / "p")


def test_corrupted_checkpoint(tiny, tmp_path, capsys):
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"p{suffix}").write_bytes((tiny / "run" / f"prior{suffix}").read_bytes())
    data = (tmp_path / "p.safetensors").read_bytes()
    (tmp_path / "p.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InterferoError, match="corrupted"):
        load_prior_network(tmp_path / "p")
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(InterferoError, match="not valid JSON"):
        load_prior_network(tmp_path / "p")
    err = _one_line_exit_2(capsys, ["sample-prior", "--prior", str(tmp_path / "p"), "--out", str(tmp_path / "o")])
    assert "JSON" in err
    assert not (tmp_path / "o").exists()


def test_unknown_prior_name(capsys, tmp_path):
    err = _one_line_exit_2(capsys, ["sample-prior", "--prior", "nonesuch", "--out", str(tmp_path / "o")])
    assert "unknown prior 'nonesuch'" in err


def test_hdf5_without_images(tmp_path, capsys):
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("pictures", data=np.zeros((2, 1, 4, 4)))
    with pytest.raises(InterferoError, match="no 'images' dataset"):
        load_dataset(tmp_path / "bad.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    err = _one_line_exit_2(capsys, ["train-prior", "--data", str(tmp_path / "junk.h5"), "--out", str(tmp_path / "r")])
    assert "not a readable HDF5" in err
    assert not (tmp_path / "r").exists()


def test_nan_images(tmp_path):
    images = np.zeros((3, 1, 4, 4), dtype=np.float32)
    images[1, 0, 2, 2] = np.nan
    save_dataset(tmp_path / "nan.h5", images, "test")
    with pytest.raises(InterferoError, match="NaN"):
        load_dataset(tmp_path / "nan.h5")
    g = GaussianPrior(torch.zeros(1, 2, 2), torch.eye(4))
    x = torch.zeros(2, 1, 2, 2)
    x[0, 0, 0, 0] = float("nan")
    for prior in (g, TVPrior((1, 2, 2)), MEMPrior(torch.ones(1, 2, 2))):
        with pytest.raises(InterferoError, match="NaN"):
            prior.log_prob(x)


def test_nan_image_to_score_prior(tiny):
    prior = load_prior(str(tiny / "run" / "prior"))
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 3, 3] = float("inf")
    with pytest.raises(InterferoError, match="NaN or infinite"):
        prior.log_prob(x)
    with pytest.raises(InterferoError, match="shape"):
        prior.log_prob(torch.zeros(1, 1, 32, 32))


def test_cli_usage_errors(capsys, tmp_path):
    _one_line_exit_2(capsys, ["train-prior", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exc:
        main(["make-dataset", "blackholes", "--n", "0", "--out", str(tmp_path / "x.h5")])
    assert exc.value.code == 2
    capsys.readouterr()
    _one_line_exit_2(capsys, ["make-dataset", "patches", "--n", "4", "--out", str(tmp_path / "no" / "x.h5")])
