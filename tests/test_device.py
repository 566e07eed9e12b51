"""Where a reconstruction runs (``--device``): what can be checked without a GPU.

PyTorch's ``meta`` device stands in for a GPU: a tensor there has a shape and a dtype but no values, and any
operation mixing it with a CPU tensor fails as it would on a GPU. So the operator's likelihood evaluated on
``meta`` proves that nothing in it is created on, or left on, the CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch

from interfero.datafiles import data_path
from interfero.errors import InterferoError
from posterior.reconstruct import ReconstructSettings, build_problem, check_device, on_cpu

DEMO = str(data_path("demo/eht2017_crescent_grf.uvfits"))


@pytest.fixture(scope="module")
def problem():
    _, _, op, prior, _ = build_problem(DEMO, ReconstructSettings())
    return op, prior


def test_operator_moves_with_its_data_and_evaluates_there(problem):
    op, _ = problem
    moved = copy.deepcopy(op).to("meta")  # a meta tensor has no values to bring back: a copy goes there
    assert all(moved.data[k].device.type == "meta" for k in moved.products)
    assert moved.tri_rows.device.type == "meta" and moved.vis_op.matrix.device.type == "meta"
    assert all(op.data[k].device.type == "cpu" for k in op.products)  # the original stays
    x = torch.rand(3, 1, 32, 32, device="meta")
    ll = moved.log_likelihood(x)  # fails if any term reads a CPU tensor
    assert ll.device.type == "meta" and ll.shape == (3,)
    with pytest.raises(RuntimeError, match="device"):  # the check above can fail: a CPU tensor in the sum does
        ll + torch.zeros(3)


def test_operator_dtype_casts_leave_the_data_as_measured(problem):
    op, _ = problem
    cast = copy.deepcopy(op).float()
    for k in op.products:
        assert cast.data[k].dtype == op.data[k].dtype
        torch.testing.assert_close(cast.data[k], op.data[k], rtol=0, atol=0)


def test_on_cpu_runs_the_block_on_the_cpu_and_puts_modules_back(problem):
    op, prior = problem
    with on_cpu(op, prior):
        assert op.tri_rows.device.type == "cpu"
    assert op.tri_rows.device.type == "cpu" and next(prior.parameters()).device.type == "cpu"
    with pytest.raises(KeyError), on_cpu(op):  # put back also when the block fails
        raise KeyError("x")
    assert op.tri_rows.device.type == "cpu"


def test_check_device():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(InterferoError, match="unknown --device 'tpu'"):
        check_device("tpu")
    with pytest.raises(InterferoError, match="unsupported --device 'meta'"):
        check_device("meta")
    with pytest.raises(InterferoError, match="--device cuda:99"):
        check_device("cuda:99")  # no GPU, or not 100 of them


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_check_device_without_cuda():
    with pytest.raises(InterferoError, match="no CUDA GPU"):
        check_device("cuda")


def test_device_is_for_dpi_only(monkeypatch):
    import posterior.reconstruct as rec

    monkeypatch.setattr(rec, "check_device", lambda name: torch.device(name))  # as on a machine with a GPU
    with pytest.raises(InterferoError, match="--device cuda is for --method dpi only"):
        rec.check_settings(ReconstructSettings(method="dps", device="cuda"))
    rec.check_settings(ReconstructSettings(method="dps", device="cpu:0"))  # the CPU by another name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_reconstruct_on_a_gpu_and_resume_on_the_cpu(tmp_path):
    """On a GPU machine: a short fit on the GPU scores as one on the CPU does, and its checkpoint continues on
    the CPU (the GPU generator's state is saved beside the CPU's and ignored there)."""
    import json

    from posterior.reconstruct import reconstruct

    truth = str(data_path("demo/crescent_grf_64.fits"))
    s = ReconstructSettings(steps=200, ensemble=1, samples=64, device="cuda")
    m = reconstruct(DEMO, tmp_path / "gpu", s, truth=truth, progress=False)
    assert m["device"] == "cuda" and m["nxcorr_blur10"] > 0.95
    from posterior.dpi import load_checkpoint

    record, tensors = load_checkpoint(tmp_path / "gpu")
    assert "rng_cuda" in tensors and record["step"] == 200
    m2 = reconstruct(DEMO, tmp_path / "gpu", ReconstructSettings(steps=250, ensemble=1, samples=64), truth=truth,
                     progress=False, resume=True)
    assert m2["device"] == "cpu" and json.loads((tmp_path / "gpu" / "metrics.json").read_text())["steps"] == 250
