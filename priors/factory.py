"""Which kind of prior a name means, decided once, and the prior built from it.

``--prior`` names either a classical regulariser (``tv``, ``mem``, ``tv+mem``, ``l1``:
:func:`priors.classical.image_regulariser`) or a score prior (a shipped name such as ``default`` or a
prior file stem: :func:`priors.pretrained.load_prior`). :func:`prior_kind` tells them apart and says
what a variational posterior over that prior needs; nothing downstream checks names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Prior
from .classical import REGULARISERS


@dataclass(frozen=True)
class PriorKind:
    """name: as given; classical: a closed-form regulariser (else a score prior); positive_images: a flow
    over it must output positive images (MEM's entropy needs them; TV and L1 are fitted the same way, as
    RML images are); a score prior's density (``p_eps``, with its small noise) covers both signs."""

    name: str
    classical: bool
    positive_images: bool


def prior_kind(name: str) -> PriorKind:
    if name in REGULARISERS:
        return PriorKind(name, True, True)
    return PriorKind(name, False, False)


def build_prior(kind: PriorKind, reference: torch.Tensor | None = None, weight: float = 1000.0,
                method: str = "elbo", expect_image_size: int | None = None, **score_options) -> Prior:
    """The prior ``kind`` names: a classical regulariser normalised by ``reference`` (``(C, H, W)``, the
    image the total flux and MEM's reference come from) with ``weight`` nats, or a score prior loaded with
    ``method`` (``elbo`` / ``ode``) and ``score_options`` (``elbo={...}``, ``ode={...}``)."""
    if kind.classical:
        from .classical import image_regulariser

        if reference is None:
            raise ValueError("a classical prior needs a reference image")
        return image_regulariser(kind.name, reference, weight)
    from .pretrained import load_prior

    return load_prior(kind.name, method=method, expect_image_size=expect_image_size, **score_options)
