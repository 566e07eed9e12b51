"""The prior contract: ``log_prob(x) -> (B,)`` for images ``x`` of shape ``(B, C, H, W)``.

``log_prob`` is differentiable in ``x``; :meth:`Prior.score` is its gradient
(closed form where a subclass knows it, autograd otherwise). Each prior states
in :attr:`Prior.normalised` what its log-density is normalised to:
``"exact"`` (a normalised density on R^D), ``"bound"`` (a lower bound of a
normalised density), ``"unnormalised"`` (up to an unknown constant; fine for
MAP and for variational inference with fixed prior weight, meaningless for
model comparison) or ``"gradient"`` (the value carries nothing, only its
gradient is the prior's score: fine for reverse-KL variational inference,
not for MAP line searches, Renyi bounds or importance weights).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from interfero.errors import InterferoError


class Prior(nn.Module, ABC):
    """An image prior over ``image_shape = (C, H, W)``."""

    normalised: str = "unnormalised"
    name: str = "prior"
    fov_uas: float | None = None  # field of view (uas) the prior was trained for; None: any
    training_data: dict | None = None  # record of the training set, if the prior was learnt from one

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)

    def check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise InterferoError(f"prior expects images of shape (B, {', '.join(map(str, self.image_shape))}),"
                                 f" got {tuple(x.shape)}")
        if not torch.all(torch.isfinite(x)):
            raise InterferoError("prior evaluated on an image with NaN or infinite pixels")

    @abstractmethod
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` per batch item, shape ``(B,)``."""

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """``grad_x log p(x)`` (autograd of :meth:`log_prob` unless overridden)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_prob(xg).sum(), xg)
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)
