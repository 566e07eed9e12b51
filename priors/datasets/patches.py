"""Natural-image patches (out-of-distribution set): random crops of pictures scikit-image ships.

Grey-scale versions of the bundled pictures (no download), values in [0, 1];
each patch is a random square crop of side ``npix * zoom`` (``zoom`` uniform in
{1, 2, 3, 4}) averaged down to ``npix`` x ``npix``.
"""

from __future__ import annotations

import numpy as np

from interfero.errors import InterferoError

PICTURES = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "brick", "grass",
            "gravel", "text", "page", "clock", "hubble_deep_field", "immunohistochemistry")


def _pictures() -> list[np.ndarray]:
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    out = []
    for name in PICTURES:
        im = img_as_float(getattr(skimage.data, name)())
        out.append(rgb2gray(im[..., :3]) if im.ndim == 3 else im)
    return out


def natural_patches(n: int, npix: int = 16, seed: int = 0) -> np.ndarray:
    """``(n, 1, npix, npix)`` float32 patches."""
    rng = np.random.default_rng(seed)
    pics = _pictures()
    largest = min(min(p.shape[:2]) for p in pics) // 4
    if npix > largest:
        raise InterferoError(f"patches are at most {largest}x{largest} pixels (4x zoom of the smallest picture),"
                             f" got {npix}")
    out = np.empty((n, 1, npix, npix), dtype=np.float32)
    for i in range(n):
        pic = pics[rng.integers(len(pics))]
        zoom = int(rng.integers(1, 5))
        side = npix * zoom
        r0 = rng.integers(pic.shape[0] - side + 1)
        c0 = rng.integers(pic.shape[1] - side + 1)
        crop = pic[r0 : r0 + side, c0 : c0 + side]
        out[i, 0] = crop.reshape(npix, zoom, npix, zoom).mean(axis=(1, 3))
    return out
