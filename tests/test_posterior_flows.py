"""Normalizing flows: log q consistency, log-determinants against autograd Jacobians, initialisation, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interfero.errors import InterferoError
from posterior.flows import OutputTransform, build_flow


def _perturb(flow, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


@pytest.mark.parametrize("kind", ["realnvp", "glow"])
@pytest.mark.parametrize("shape,layout,output,coupling", [
    ((1, 8, 8), "conv", "softplus", "exp"), ((1, 8, 8), "conv", "softplus", "sigmoid"),
    ((1, 6, 6), "dense", "exp", "exp"), ((1, 1, 2), "dense", "none", "exp"), ((3,), "dense", "softplus", "exp")])
def test_sample_log_q_equals_log_prob(kind, shape, layout, output, coupling):
    flow = _perturb(build_flow(shape, kind=kind, layout=layout, blocks=3, hidden=8, output=output, scale=0.3,
                               coupling_scale=coupling))
    flow = flow.double()
    torch.manual_seed(1)
    x, log_q = flow.sample(6)
    assert x.shape == (6, *shape)
    assert torch.allclose(flow.log_prob(x), log_q, atol=1e-8, rtol=1e-10)
    if output != "none":
        assert (x > 0).all()


def _log_q_by_autograd(flow, seed: int):
    """A base draw pushed through the flow's layers, and ``log N(z) - log|det dx/dz|`` with the Jacobian from
    autograd (float64 flows)."""
    z0 = torch.randn(1, *flow.q0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

    def push(zflat):
        z = zflat.reshape(1, *flow.q0.shape)
        for layer in flow.flows:
            z, _ = layer(z)
        return z.reshape(-1)

    jac = torch.autograd.functional.jacobian(push, z0.reshape(-1))
    d = math.prod(flow.x_shape)
    assert jac.shape == (d, d)
    x = push(z0.reshape(-1)).reshape(1, *flow.x_shape)
    return x, flow.q0.log_prob(z0) - torch.linalg.slogdet(jac)[1]


@pytest.mark.parametrize("kind,layout,shape,coupling", [("realnvp", "dense", (4,), "exp"),
                                                        ("glow", "dense", (1, 2, 2), "exp"),
                                                        ("glow", "conv", (1, 4, 4), "exp"),
                                                        ("realnvp", "conv", (1, 4, 4), "sigmoid")])
def test_log_q_matches_autograd_jacobian(kind, layout, shape, coupling):
    """log q(x) = log N(z) - log|det dx/dz| with the Jacobian from autograd (float64)."""
    flow = _perturb(build_flow(shape, kind=kind, layout=layout, blocks=2, hidden=6, output="softplus", scale=0.7,
                               coupling_scale=coupling))
    flow = flow.double()
    x, expected = _log_q_by_autograd(flow, seed=2)
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-8)


@pytest.mark.parametrize("coupling", ["exp", "sigmoid"])
def test_init_centres_q_on_the_given_image(coupling):
    init = torch.rand(1, 8, 8) * 0.02 + 0.001
    flow = build_flow((1, 8, 8), kind="realnvp", blocks=4, hidden=8, output="softplus", scale=0.01, init=init,
                      init_spread=1e-4, coupling_scale=coupling)
    x, _ = flow.sample(4)
    assert torch.allclose(x, init.expand(4, -1, -1, -1), rtol=1e-3, atol=1e-6)


def test_construction_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = build_flow((1, 8, 8), kind="realnvp", blocks=2, hidden=4, seed=3)
    after = torch.rand(1)
    b = build_flow((1, 8, 8), kind="realnvp", blocks=2, hidden=4, seed=3)
    assert torch.equal(before, after)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_softplus_inverse_round_trip():
    t = OutputTransform("softplus", scale=0.2).double()
    u = torch.linspace(-30, 30, 13, dtype=torch.float64).reshape(1, 13)
    x, ld = t(u)
    u2, ild = t.inverse(x)
    assert torch.allclose(u2, u, rtol=1e-9, atol=1e-9)
    assert torch.allclose(ld, -ild)


def test_bad_flow_settings():
    with pytest.raises(InterferoError, match="unknown flow"):
        build_flow((1, 8, 8), kind="maf")
    with pytest.raises(InterferoError, match="even image sizes"):
        build_flow((1, 7, 7), layout="conv")
    with pytest.raises(InterferoError, match="output transform"):
        build_flow((1, 8, 8), output="sigmoid")
    with pytest.raises(InterferoError, match="unknown coupling scale"):
        build_flow((1, 8, 8), coupling_scale="tanh")
    with pytest.raises(InterferoError, match="non-positive"):
        OutputTransform("softplus").inverse(torch.zeros(1, 3))


def _random_base(d: int, r: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vecs = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0]
    return vecs, -torch.rand(r, generator=g, dtype=torch.float64) * 3


@pytest.mark.parametrize("layout,kind", [("conv", "realnvp"), ("dense", "glow"), ("dense", "realnvp")])
def test_correlated_base_log_q(layout, kind):
    """Sampled log q equals log_prob, and matches the autograd Jacobian through every layer."""
    flow = _perturb(build_flow((1, 4, 4), kind=kind, layout=layout, blocks=2, hidden=6, output="none", scale=0.5,
                               coupling_scale="sigmoid", base=_random_base(16, 5)))
    flow = flow.double()
    flow.q0.vecs.copy_(_random_base(16, 5)[0])  # orthonormal in float64, so C^-1 is exact
    torch.manual_seed(3)
    x, log_q = flow.sample(5)
    assert torch.allclose(flow.log_prob(x), log_q, atol=1e-8, rtol=1e-10)

    q0 = flow.q0
    e = torch.randn(1, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def push(eflat):  # base noise -> event, as CorrelatedGaussian.forward then the layers
        z = q0.loc + torch.exp(q0.log_scale) * q0._correlate(eflat.reshape(1, 16), 1.0)[:, q0.order].reshape(
            1, *q0.shape)
        for layer in flow.flows:
            z, _ = layer(z)
        return z.reshape(-1)

    jac = torch.autograd.functional.jacobian(push, e.reshape(-1))
    expected = -0.5 * (e**2).sum() - 8 * math.log(2 * math.pi) - torch.linalg.slogdet(jac)[1]
    assert torch.allclose(flow.log_prob(push(e.reshape(-1)).reshape(1, 1, 4, 4)), expected.reshape(1), atol=1e-8)


@pytest.mark.parametrize("layout", ["conv", "dense"])
def test_correlated_base_starts_at_the_given_gaussian(layout):
    """At initialisation q is exactly N(init, (spread * scale)^2 C^2), C = I + V diag(gain - 1) V^T, in image
    order, whatever permutations and contracting couplings the layers hold (closed-form density)."""
    vecs, log_gain = _random_base(64, 7, seed=1)
    init = torch.rand(1, 8, 8, dtype=torch.float64)
    flow = build_flow((1, 8, 8), kind="realnvp", layout=layout, blocks=4, hidden=8, output="none", scale=0.3,
                      init=init, init_spread=0.7, coupling_scale="sigmoid", base=(vecs, log_gain)).double()
    flow.q0.vecs.copy_(vecs)
    c = torch.eye(64, dtype=torch.float64) + vecs @ torch.diag(torch.expm1(log_gain)) @ vecs.T
    exact = torch.distributions.MultivariateNormal(init.reshape(-1), (0.7 * 0.3) ** 2 * c @ c)
    torch.manual_seed(0)
    x, log_q = flow.sample(6)
    assert torch.allclose(log_q, exact.log_prob(x.reshape(6, -1)), atol=1e-6)


def test_correlated_base_bad_settings():
    with pytest.raises(InterferoError, match="correlated base over 16"):
        build_flow((1, 4, 4), output="none", base=(torch.zeros(15, 2), torch.zeros(2)))
    with pytest.raises(InterferoError, match="finite"):
        build_flow((1, 4, 4), output="none", base=(torch.full((16, 1), float("nan")), torch.zeros(1)))
    with pytest.raises(InterferoError, match="start as a permutation"):
        build_flow((1, 4, 4), kind="glow", output="none", base=_random_base(16, 2))


def test_inverse_dct_is_the_orthonormal_dct():
    """InverseDCT against scipy's orthonormal 2-D DCT-II (an independent implementation), both ways."""
    from scipy.fft import dctn, idctn

    from posterior.flows import InverseDCT

    c = torch.randn(3, 2, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    layer = InverseDCT(6, 8)
    x, ld = layer(c)
    assert np.allclose(x.numpy(), idctn(c.numpy(), axes=(-2, -1), norm="ortho"), atol=1e-12)
    back, ild = layer.inverse(x)
    assert np.allclose(back.numpy(), dctn(x.numpy(), axes=(-2, -1), norm="ortho"), atol=1e-12)
    assert torch.allclose(back, c, atol=1e-12) and torch.equal(ld, torch.zeros(3)) and torch.equal(ild, ld)
    assert not layer.state_dict()  # a fixed map: nothing in a checkpoint


@pytest.mark.parametrize("layout", ["conv", "dense"])
def test_dct_flow_log_q_and_start(layout):
    """A DCT-basis flow: sample log q equals log_prob and the autograd change of variables; untrained, q is the
    diagonal Gaussian of the base over the image's DCT coefficients (closed form), centred on ``init``."""
    from scipy.fft import dctn
    from scipy.stats import norm

    shape, scale, spread = (1, 4, 4), 0.3, 0.2
    init = torch.rand(1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # exp couplings start as the identity (a sigmoid one contracts)
    flow = build_flow(shape, layout=layout, blocks=2, hidden=6, output="none", scale=scale, init=init,
                      init_spread=spread, coupling_scale="exp", basis="dct").double()
    assert flow.config["basis"] == "dct" and "basis" not in build_flow(shape, blocks=1, hidden=2).config
    torch.manual_seed(2)
    x, log_q = flow.sample(5)
    c = dctn((x - init).detach().numpy() / scale, axes=(-2, -1), norm="ortho").reshape(5, -1)
    expected = norm.logpdf(c, scale=spread).sum(1) - 16 * math.log(scale)
    assert np.allclose(log_q.detach().numpy(), expected, atol=1e-8)
    _perturb(flow, seed=3)
    x, log_q = flow.sample(5)
    assert torch.allclose(flow.log_prob(x), log_q, atol=1e-8)
    x, expected = _log_q_by_autograd(flow, seed=4)
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-8)


def test_dct_basis_bad_settings():
    with pytest.raises(InterferoError, match="unknown flow basis"):
        build_flow((1, 8, 8), basis="wavelet")
    with pytest.raises(InterferoError, match="DCT-basis flow is for images"):
        build_flow((4,), basis="dct")
    vecs, log_gain = _random_base(64, 3)
    with pytest.raises(InterferoError, match="diagonal base"):
        build_flow((1, 8, 8), basis="dct", output="none", base=(vecs, log_gain))
