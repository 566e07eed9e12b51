"""Score models: a compact time-conditioned U-Net and the analytic Gaussian score.

A *score model* is a callable ``score(x, t) -> (B, C, H, W)`` with ``t`` of
shape ``(B,)``, approximating ``grad_x log p_t(x)``. :class:`NoisePredictionScore`
turns a network that predicts the noise ``z`` of ``x_t = alpha x_0 + std z``
into a score, ``-eps_theta(x, t) / std(t)``; :class:`GaussianScore` is the exact
score of Gaussian data ``N(mu, Sigma)`` diffused by any SDE of
:mod:`priors.sde`, ``-(alpha^2 Sigma + std^2 I)^{-1} (x - alpha mu)``, used as
the reference in tests and validation.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from interfero.errors import InterferoError

from .sde import SDE, _bcast


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of continuous times ``t`` (shape ``(B,)``) -> ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    arg = scale * t[:, None] * freqs[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 4) or 1, ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over pixels (used at low resolution only)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = _norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, emb=None):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(a.transpose(1, 2).reshape(b, c, h, w))


class GlobalLinear(nn.Module):
    """A time-modulated low-rank linear map over all pixels: ``P_out (g(t) * (P_in x) + b(t))``.

    Convolutions see a pixel's neighbourhood; this branch sees the whole image at once. The exact
    noise prediction of Gaussian data ``N(mu, U diag(lam) U^T)`` is of this form with ``P_in = U^T``,
    ``P_out = U``, ``g_k(t) = std / (alpha^2 lam_k + std^2)`` and ``b(t) = -alpha g(t) * U^T mu``,
    so a rank-``D`` branch can represent it exactly, and a lower rank the leading directions.
    ``P_out`` starts at zero: an added branch leaves a network's output unchanged until it is trained.
    """

    def __init__(self, size: int, rank: int, temb: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(size, rank, bias=False)
        self.gain = nn.Linear(temb, 2 * rank)
        self.proj_out = nn.Linear(rank, size, bias=False)
        nn.init.zeros_(self.proj_out.weight)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        g, b = self.gain(F.silu(emb)).chunk(2, dim=1)
        return self.proj_out(g * self.proj_in(x.flatten(1)) + b).reshape(x.shape)


class UNet(nn.Module):
    """Time-conditioned U-Net predicting the noise of ``x_t`` (same shape as the input).

    Args:
        image_size: 16, 32 or 64 (any size divisible by ``2**(len(channel_mult)-1)``).
        channels: image channels (1 for Stokes I).
        width: channels of the first level; level ``i`` has ``width * channel_mult[i]``.
        channel_mult: per-resolution width multipliers (default by size:
            16 -> (1, 2), 32 -> (1, 2, 2), 64 -> (1, 2, 2, 2)).
        num_res_blocks: residual blocks per level.
        attn_resolutions: resolutions (pixels) with self-attention (default: <= 8).
        output_norm: GroupNorm before the output convolution (the usual DDPM head; default). ``False``
            drops it (``conv_out(silu(h))``), an experiment: trained from scratch on the face Gaussian
            it did worse than the normed head (score-error KL bound 43.0 against 19.5 nats at equal cost).
        global_rank: rank of a :class:`GlobalLinear` branch added to the output (0: none, the default).
    """

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 1,
        width: int = 32,
        channel_mult: tuple[int, ...] | None = None,
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] | None = None,
        dropout: float = 0.0,
        output_norm: bool = True,
        global_rank: int = 0,
    ) -> None:
        super().__init__()
        if channel_mult is None:
            channel_mult = {16: (1, 2), 32: (1, 2, 2), 64: (1, 2, 2, 2)}.get(image_size, (1, 2, 2))
        channel_mult = tuple(int(m) for m in channel_mult)
        if image_size % 2 ** (len(channel_mult) - 1):
            raise InterferoError(f"image size {image_size} is not divisible by {2 ** (len(channel_mult) - 1)}")
        if global_rank < 0:
            raise InterferoError(f"global rank must be >= 0, got {global_rank}")
        if attn_resolutions is None:
            attn_resolutions = tuple(r for r in (8, 4, 2) if r <= image_size // 2)
        self.config = {
            "image_size": image_size,
            "channels": channels,
            "width": width,
            "channel_mult": list(channel_mult),
            "num_res_blocks": num_res_blocks,
            "attn_resolutions": list(attn_resolutions),
            "dropout": dropout,
            "output_norm": bool(output_norm),
            "global_rank": int(global_rank),
        }
        temb = 4 * width
        self.width = width
        self.temb = nn.Sequential(nn.Linear(width, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, res = [width], width, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(ch, width * mult, temb, dropout)]
                ch = width * mult
                if res in attn_resolutions:
                    blocks.append(Attention(ch))
                self.down.append(nn.ModuleList(blocks))
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, temb, dropout), Attention(ch), ResBlock(ch, ch, temb, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                blocks = [ResBlock(ch + skips.pop(), width * mult, temb, dropout)]
                ch = width * mult
                if res in attn_resolutions:
                    blocks.append(Attention(ch))
                self.up.append(nn.ModuleList(blocks))
            if level > 0:
                upsample = nn.Upsample(scale_factor=2, mode="nearest")
                self.up.append(nn.ModuleList([upsample, nn.Conv2d(ch, ch, 3, padding=1)]))
                res *= 2
        self.norm_out = _norm(ch) if output_norm else nn.Identity()
        self.conv_out = nn.Conv2d(ch, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.global_linear = (GlobalLinear(channels * image_size**2, int(global_rank), temb)
                              if global_rank else None)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.temb(timestep_embedding(t, self.width))
        h = self.conv_in(x)
        hs = [h]
        for blocks in self.down:
            if isinstance(blocks[0], nn.Conv2d):
                h = blocks[0](h)
            else:
                for block in blocks:
                    h = block(h, emb)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for blocks in self.up:
            if isinstance(blocks[0], nn.Upsample):
                h = blocks[1](blocks[0](h))
            else:
                h = torch.cat([h, hs.pop()], dim=1)
                for block in blocks:
                    h = block(h, emb)
        out = self.conv_out(F.silu(self.norm_out(h)))
        if self.global_linear is not None:
            out = out + self.global_linear(x, emb)
        return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class NoisePredictionScore(nn.Module):
    """``score(x, t) = -net(x, t) / std(t)`` for a network trained to predict the noise."""

    def __init__(self, net: nn.Module, sde: SDE) -> None:
        super().__init__()
        self.net, self.sde = net, sde

    def noise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, std = self.sde.coefficients(t)
        return -self.net(x, t) / _bcast(std, x)


class GaussianScore(nn.Module):
    """Exact score of ``N(mean, cov)`` data diffused by ``sde`` (all float64 internally).

    ``p_t = N(alpha mean, alpha^2 cov + std^2 I)``; with ``cov = U diag(lam) U^T``
    the score is ``-U diag(1 / (alpha^2 lam + std^2)) U^T (x - alpha mean)``.
    :meth:`log_prob` and :meth:`divergence` give the matching closed forms.
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, sde: SDE) -> None:
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float64)
        lam, vecs = torch.linalg.eigh(torch.as_tensor(cov, dtype=torch.float64))
        if lam.min() <= 0:
            raise InterferoError("Gaussian covariance must be positive definite")
        self.shape = tuple(mean.shape)
        self.register_buffer("mean", mean.reshape(-1))
        self.register_buffer("lam", lam)
        self.register_buffer("vecs", vecs)
        self.sde = sde

    @classmethod
    def fit(cls, samples: torch.Tensor, sde: SDE, floor: float = 1e-6) -> GaussianScore:
        """The diffused score of the Gaussian fitted to ``samples`` ``(N, C, H, W)`` (sample mean and
        covariance, eigenvalues floored at ``floor`` times the largest); e.g. a Hutchinson control variate."""
        x = torch.as_tensor(samples, dtype=torch.float64).reshape(samples.shape[0], -1)
        if x.shape[0] < 2 or not torch.all(torch.isfinite(x)):
            raise InterferoError("a Gaussian fit needs at least 2 finite samples")
        mean = x.mean(0)
        cov = torch.cov(x.T).reshape(x.shape[1], x.shape[1])
        lam, vecs = torch.linalg.eigh(0.5 * (cov + cov.T))
        lam = lam.clamp_min(floor * float(lam.max().clamp_min(1e-300)))
        return cls(mean.reshape(samples.shape[1:]), (vecs * lam) @ vecs.T, sde)

    def _var(self, t, like):
        alpha, std = self.sde.coefficients(torch.as_tensor(t, dtype=torch.float64, device=like.device))
        alpha, std = alpha.reshape(-1, 1), std.reshape(-1, 1)
        return alpha, alpha**2 * self.lam[None] + std**2  # (B or 1, D)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, var = self._var(t, x)
        r = x.reshape(x.shape[0], -1).double() - alpha * self.mean[None]
        s = -((r @ self.vecs) / var) @ self.vecs.T
        return s.to(x.dtype).reshape(x.shape)

    def log_prob(self, x: torch.Tensor, t: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``log p_t(x)`` in closed form, shape ``(B,)`` (float64)."""
        alpha, var = self._var(t, x)
        r = (x.reshape(x.shape[0], -1).double() - alpha * self.mean[None]) @ self.vecs
        d = r.shape[1]
        return -0.5 * ((r**2 / var).sum(-1) + torch.log(var).sum(-1) + d * math.log(2 * math.pi))

    def divergence(self, t: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``div_x score(x, t) = -sum 1 / (alpha^2 lam + std^2)``."""
        _, var = self._var(t, like)
        return -(1 / var).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.lam.numel(), generator=generator, dtype=torch.float64)
        return (self.mean[None] + (z * self.lam.sqrt()) @ self.vecs.T).reshape(n, *self.shape)


class GaussianMixtureScore(nn.Module):
    """Exact score of the isotropic mixture ``sum_k w_k N(mu_k, s_k^2 I)`` diffused by ``sde`` (float64).

    ``p_t = sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 + std^2) I)``; the score is the
    responsibility-weighted sum of the component scores. :meth:`log_prob` gives ``log p_t``.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, sde: SDE) -> None:
        super().__init__()
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if weights.ndim != 1 or means.shape[0] != weights.shape[0] or stds.shape != weights.shape:
            raise InterferoError("mixture needs K weights, K means and K standard deviations")
        if (weights <= 0).any() or (stds <= 0).any():
            raise InterferoError("mixture weights and standard deviations must be > 0")
        self.shape = tuple(means.shape[1:])
        self.register_buffer("log_w", torch.log(weights / weights.sum()))
        self.register_buffer("means", means.reshape(means.shape[0], -1))
        self.register_buffer("var0", stds**2)
        self.sde = sde

    def _parts(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha, std = self.sde.coefficients(torch.as_tensor(t, dtype=torch.float64, device=x.device))
        alpha, std = alpha.reshape(-1, 1, 1), std.reshape(-1, 1, 1)
        var = alpha**2 * self.var0[None, :, None] + std**2  # (B or 1, K, 1)
        r = x.reshape(x.shape[0], 1, -1).double() - alpha * self.means[None]  # (B, K, D)
        d = r.shape[-1]
        logc = self.log_w[None] - 0.5 * ((r**2).sum(-1) / var[..., 0] + d * torch.log(2 * math.pi * var[..., 0]))
        return r, var, logc

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r, var, logc = self._parts(x, t)
        resp = torch.softmax(logc, dim=1)[..., None]
        return (-(resp * r / var).sum(1)).to(x.dtype).reshape(x.shape)

    def log_prob(self, x: torch.Tensor, t: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``log p_t(x)`` in closed form, shape ``(B,)`` (float64)."""
        return torch.logsumexp(self._parts(x, t)[2], dim=1)
