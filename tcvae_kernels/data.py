"""Built-in ground-truth data for disentanglement experiments: a procedurally rendered
dSprites-like data set (no download), a loader for the real dSprites file, and the small
"ground-truth data" interface the metrics use.

``Shapes``: 64×64 binary images of a square, an ellipse or a heart at 6 scales, 40 rotations and
32×32 positions — the factor grid of dSprites (Matthey et al. 2017): 3·6·40·32·32 = 737,280
images. Images are rendered on demand with numpy (deterministic: the same factors give the same
pixels), so the whole grid never needs to be stored.

Any subclass of :class:`GroundTruthData` that sets ``factor_sizes`` and implements
``sample_observations_from_factors(factors, rng)`` works with :mod:`tcvae_kernels.metrics`;
:class:`ObservedData` wraps observations whose factor grid is incomplete.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

SHAPES = ("square", "ellipse", "heart")
FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
IMAGE_SIZE = 64


def _integers(rng, high: int, size=None):
    """Uniform integers in [0, high) from a Generator or a legacy RandomState."""
    if isinstance(rng, np.random.RandomState):
        return rng.randint(high, size=size)
    return rng.integers(0, high, size=size)


class GroundTruthData:
    """Factors of variation with known values, and observations generated from them: the interface
    of disentanglement_lib's ground-truth data sets that the metrics use: ``factor_names`` (K
    names) and ``factor_sizes`` (the number of values of each factor, factor k in [0, size_k)).
    Subclasses implement ``sample_observations_from_factors(factors [n, K], rng) -> [n, ...]``
    (and ``factors_to_index`` for complete grids).
    """

    factor_names: tuple = ()
    factor_sizes: tuple = ()

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    def sample_factors(self, n: int, rng) -> np.ndarray:
        """[n, num_factors] integer factor values, each uniform over its range. ``rng``: a
        ``np.random.Generator`` or a legacy ``np.random.RandomState`` (the latter draws exactly
        what disentanglement_lib's data sets draw: ``randint(size_k, size=n)`` for each factor k)."""
        return np.stack([_integers(rng, s, n) for s in self.factor_sizes], axis=1)

    def sample_factors_with_fixed(self, n: int, k: int, rng) -> np.ndarray:
        """[n, num_factors] factors in which factor k takes one (random) value in every row and
        the others vary: the batches of the FactorVAE score."""
        f = self.sample_factors(n, rng)
        f[:, k] = f[0, k]
        return f

    def sample_factors_matching(self, factors: np.ndarray, k: int, rng) -> np.ndarray:
        """New factors [n, num_factors] whose factor k equals ``factors[:, k]`` row by row: the
        pairs of the β-VAE score."""
        f = self.sample_factors(len(factors), rng)
        f[:, k] = factors[:, k]
        return f

    def sample(self, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
        """(factors [n, K], observations [n, ...])."""
        f = self.sample_factors(n, rng)
        return f, self.sample_observations_from_factors(f, rng)

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
    """Render dSprites-grid factors to binary images (deterministic: numpy only).

    Geometry: scale s ∈ linspace(0.5, 1, 6) gives a shape of half-width ≈ 10·s pixels (at 64 px);
    orientation θ ∈ [0, 2π) in 40 steps; the centre moves over [12, 52] px in 32 steps per axis.

    Args:
        factors: integer indices [n, 5]: shape (3), scale (6), orientation (40), pos_x (32), pos_y (32).
        size: image side in pixels.

    Returns:
        [n, size, size] uint8 images with values in {0, 1}.

    Raises:
        ValueError: factors not [n, 5], or an index out of its range (naming the factor).
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
    """The sub-grid taking every ``strides[k]``-th value of factor k (a smaller, still complete grid).

    Args:
        data: a complete grid (implements ``factors_to_index``).
        strides: K positive steps.

    Returns:
        Flat indices into ``data``'s grid, int64 [prod_k ceil(size_k / strides[k])].
    """
    axes = [np.arange(0, n, st) for n, st in zip(data.factor_sizes, strides)]
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    return data.factors_to_index(mesh)


class ObservedData(GroundTruthData):
    """Observations [N, ...] with their integer factors [N, K] whose grid need not be complete
    (some factor combinations never observed). Sampling draws observed rows only: factors come from
    the empirical joint distribution (a row uniformly at random), fixed-factor batches from the rows
    sharing one observed value, pairs from rows with the same value of the factor. ``factor_sizes``
    is ``factors.max(0) + 1``."""

    def __init__(self, observations, factors, factor_names: Sequence[str] | None = None):
        obs, f = np.asarray(observations), np.asarray(factors)
        if f.ndim != 2 or not np.issubdtype(f.dtype, np.integer):
            raise TypeError(f"factors must be an integer array [N, K], got {f.dtype} {f.shape}")
        if obs.shape[0] != f.shape[0] or f.shape[0] == 0:
            raise ValueError(f"observations [N, ...] and factors [N, K] need the same N > 0, got {obs.shape[0]} "
                             f"and {f.shape[0]}")
        if (f < 0).any():
            raise ValueError("factors must be non-negative integers (class indices)")
        self.observations, self.factors = obs, f.astype(np.int64)
        self.factor_sizes = tuple(int(v) for v in self.factors.max(0) + 1)
        self.factor_names = tuple(factor_names) if factor_names is not None else tuple(
            f"factor{k}" for k in range(f.shape[1]))
        if len(self.factor_names) != f.shape[1]:
            raise ValueError(f"factor_names has {len(self.factor_names)} names for {f.shape[1]} factors")
        flat = self.factors_to_index(self.factors)
        order = np.argsort(flat, kind="stable")
        self._flat_sorted, self._rows_sorted = flat[order], order

    def _rows_of(self, factors, rng) -> np.ndarray:
        """One observed row per factor combination (a random one where several share it)."""
        flat = self.factors_to_index(np.asarray(factors))
        lo = np.searchsorted(self._flat_sorted, flat, side="left")
        hi = np.searchsorted(self._flat_sorted, flat, side="right")
        if (hi == lo).any():
            missing = np.asarray(factors)[np.flatnonzero(hi == lo)[0]]
            raise ValueError(f"factor combination {missing.tolist()} was never observed; sample factors with "
                             "this object's sample_factors* methods, which draw observed rows only")
        pick = lo + (np.floor(np.asarray(_uniform(rng, len(flat))) * (hi - lo))).astype(np.int64)
        return self._rows_sorted[pick]

    def sample_factors(self, n: int, rng) -> np.ndarray:
        return self.factors[_integers(rng, len(self.factors), n)]

    def sample_factors_with_fixed(self, n: int, k: int, rng) -> np.ndarray:
        value = self.factors[_integers(rng, len(self.factors)), k]
        rows = np.flatnonzero(self.factors[:, k] == value)
        return self.factors[rows[_integers(rng, len(rows), n)]]

    def sample_factors_matching(self, factors: np.ndarray, k: int, rng) -> np.ndarray:
        out = np.empty_like(np.asarray(factors))
        for value in np.unique(factors[:, k]):
            where = np.flatnonzero(factors[:, k] == value)
            rows = np.flatnonzero(self.factors[:, k] == value)
            if len(rows) == 0:
                raise ValueError(f"factor {k} never takes the value {value} in the observed data")
            out[where] = self.factors[rows[_integers(rng, len(rows), len(where))]]
        return out

    def sample_observations_from_factors(self, factors, rng=None) -> np.ndarray:
        return self.observations[self._rows_of(factors, rng if rng is not None else np.random.default_rng(0))]


def _uniform(rng, n: int):
    return rng.random_sample(n) if isinstance(rng, np.random.RandomState) else rng.random(n)
