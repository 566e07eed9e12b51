"""The face-fitted Gaussian: a ground-truth prior with exact log-density and score.

The first 100 images of ``skimage.data.lfw_subset()`` (faces, 25x25, values in
[0, 1], shipped with scikit-image) are resized to ``npix`` x ``npix`` (area
averaging with anti-aliasing), their mean and sample covariance fitted, and
the covariance eigenvalues floored by adding ``floor`` (0.01) to each. The
result is a :class:`priors.classical.GaussianPrior` of shape (1, npix, npix).
"""

from __future__ import annotations

import numpy as np
import torch

from ..classical import GaussianPrior


def face_images(npix: int = 16) -> np.ndarray:
    """The 100 LFW face images resized to ``(100, npix, npix)`` (float64, about [0, 1])."""
    from skimage.data import lfw_subset
    from skimage.transform import resize

    faces = lfw_subset()[:100]
    return np.stack([resize(f, (npix, npix), anti_aliasing=True, mode="reflect") for f in faces])


def face_gaussian(npix: int = 16, floor: float = 0.01) -> GaussianPrior:
    x = face_images(npix).reshape(100, -1)
    mean = x.mean(0)
    cov = np.cov(x, rowvar=False)
    lam, vecs = np.linalg.eigh(cov)
    cov = (vecs * (np.clip(lam, 0, None) + floor)) @ vecs.T
    return GaussianPrior(torch.from_numpy(mean.reshape(1, npix, npix)), torch.from_numpy(cov))


def sample_face_gaussian(n: int, npix: int = 16, seed: int = 0) -> np.ndarray:
    """``n`` draws ``(n, 1, npix, npix)`` float32 from :func:`face_gaussian`."""
    g = torch.Generator().manual_seed(seed)
    return face_gaussian(npix).sample(n, generator=g).float().numpy()
