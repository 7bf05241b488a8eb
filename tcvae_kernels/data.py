"""Built-in ground-truth data for disentanglement experiments: a procedurally rendered
dSprites-like data set (no download), a loader for the real dSprites file, and the small
"ground-truth data" interface the metrics use.

``Shapes``: 64×64 binary images of a square, an ellipse or a heart at 6 scales, 40 rotations and
32×32 positions — the factor grid of dSprites (Matthey et al. 2017): 3·6·40·32·32 = 737,280
images. Images are rendered on demand with numpy (deterministic: the same factors give the same
pixels), so the whole grid never needs to be stored.

Any object with ``factor_sizes``, ``sample_factors(n, rng)`` and
``sample_observations_from_factors(factors, rng)`` works with :mod:`tcvae_kernels.metrics`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

SHAPES = ("square", "ellipse", "heart")
FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
IMAGE_SIZE = 64


class GroundTruthData:
    """Factors of variation with known values, and observations generated from them."""

    factor_names: tuple = ()
    factor_sizes: tuple = ()

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """[n, num_factors] integer factor values, each uniform over its range."""
        return np.stack([rng.integers(0, s, size=n) for s in self.factor_sizes], axis=1)

    def sample_observations_from_factors(self, factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return int(np.prod(self.factor_sizes))

    def index_to_factors(self, index) -> np.ndarray:
        """Factors of flat grid indices (row-major over factor_sizes)."""
        return np.stack(np.unravel_index(np.asarray(index), self.factor_sizes), axis=-1)

    def factors_to_index(self, factors: np.ndarray) -> np.ndarray:
        return np.ravel_multi_index(tuple(np.asarray(factors).T), self.factor_sizes)


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # (x² + y² - 1)³ - x²·y³ <= 0, the classic heart curve, scaled to about the unit square
    x, y = 1.2 * u, 1.2 * v + 0.2
    return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0


def render(factors: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render [n, 5] factors (shape, scale, orientation, pos_x, pos_y indices) to [n, size, size] uint8 {0, 1}.

    Geometry: scale s ∈ linspace(0.5, 1, 6) gives a shape of half-width ≈ 10·s pixels (at 64 px);
    orientation θ ∈ [0, 2π) in 40 steps; the centre moves over [12, 52] px in 32 steps per axis.
    """
    f = np.asarray(factors)
    if f.ndim != 2 or f.shape[1] != 5:
        raise ValueError(f"factors must be [n, 5] (shape, scale, orientation, pos_x, pos_y), got {f.shape}")
    for k, (name, n_k) in enumerate(zip(FACTOR_NAMES, FACTOR_SIZES)):
        if f.size and (f[:, k].min() < 0 or f[:, k].max() >= n_k):
            raise ValueError(f"factor {name} must be in [0, {n_k}), got values {f[:, k].min()}..{f[:, k].max()}")
    n = f.shape[0]
    px = size / 64.0
    scale = (0.5 + 0.1 * f[:, 1]) * 10.0 * px  # half-width in pixels
    theta = f[:, 2] * (2 * math.pi / 40)
    cx = (12 + f[:, 3] * (40 / 31)) * px
    cy = (12 + f[:, 4] * (40 / 31)) * px
    coords = np.arange(size, dtype=np.float32) + 0.5
    gx = coords[None, None, :] - cx[:, None, None].astype(np.float32)  # [n, 1, size]
    gy = coords[None, :, None] - cy[:, None, None].astype(np.float32)  # [n, size, 1]
    c, s = np.cos(theta)[:, None, None].astype(np.float32), np.sin(theta)[:, None, None].astype(np.float32)
    sc = scale[:, None, None].astype(np.float32)
    u = (c * gx + s * gy) / sc  # pixel coordinates in the shape's frame
    v = (-s * gx + c * gy) / sc
    out = np.zeros((n, size, size), dtype=np.uint8)
    for k, name in enumerate(SHAPES):
        sel = f[:, 0] == k
        if not sel.any():
            continue
        uu, vv = u[sel], v[sel]
        if name == "square":
            mask = np.maximum(np.abs(uu), np.abs(vv)) <= 0.8
        elif name == "ellipse":
            mask = (uu / 1.0) ** 2 + (vv / 0.5) ** 2 <= 1.0
        else:
            mask = _heart(uu, vv)
        out[sel] = mask
    return out


class Shapes(GroundTruthData):
    """The dSprites factor grid, rendered procedurally (see :func:`render`). Observations are
    float32 arrays [n, 1, 64, 64] in {0, 1}."""

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(self, image_size: int = IMAGE_SIZE):
        self.image_size = image_size

    def sample_observations_from_factors(self, factors, rng=None) -> np.ndarray:
        return render(factors, self.image_size)[:, None].astype(np.float32)

    def images(self, index) -> np.ndarray:
        """Observations of flat grid indices."""
        return self.sample_observations_from_factors(self.index_to_factors(np.atleast_1d(index)))


class DSpritesFile(GroundTruthData):
    """The real dSprites data set from ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (not
    downloaded by this package: pass the path of your copy)."""

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(self, path: str):
        with np.load(path, allow_pickle=False, encoding="latin1") as data:
            if "imgs" not in data or "latents_classes" not in data:
                raise ValueError(f"{path} is not a dSprites .npz file (needs 'imgs' and 'latents_classes')")
            self.imgs = data["imgs"]  # [n, 64, 64] uint8; the full file has n = 737,280
            classes = data["latents_classes"][:, 1:]  # drop the constant colour factor
        # row of each factor combination present in the file (-1: absent)
        self._rows = np.full(int(np.prod(self.factor_sizes)), -1, dtype=np.int64)
        self._rows[self.factors_to_index(classes)] = np.arange(len(classes))

    def sample_observations_from_factors(self, factors, rng=None) -> np.ndarray:
        rows = self._rows[self.factors_to_index(factors)]
        if (rows < 0).any():
            raise ValueError("some factor combinations are not in this dSprites file")
        return self.imgs[rows][:, None].astype(np.float32)


class FactorCodes(GroundTruthData):
    """Observations are the factors themselves (scaled to [0, 1]): for testing metrics with
    synthetic encoders whose answer is known."""

    def __init__(self, factor_sizes: Sequence[int]):
        self.factor_sizes = tuple(int(s) for s in factor_sizes)
        self.factor_names = tuple(f"factor{k}" for k in range(len(self.factor_sizes)))

    def sample_observations_from_factors(self, factors, rng=None) -> np.ndarray:
        return np.asarray(factors, dtype=np.float64) / np.maximum(1, np.asarray(self.factor_sizes) - 1)


def grid_subset(data: GroundTruthData, strides: Sequence[int]) -> np.ndarray:
    """Flat indices of the sub-grid taking every ``strides[k]``-th value of factor k."""
    axes = [np.arange(0, n, st) for n, st in zip(data.factor_sizes, strides)]
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    return data.factors_to_index(mesh)
