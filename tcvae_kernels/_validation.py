"""Argument checks shared by every public entry point.

Each error names the argument and says how to fix it; nothing is silently broadcast,
truncated or cast.
"""

from __future__ import annotations

import math
import numbers

import torch

from .estimators import ESTIMATORS
from .families import FAMILIES, Family, get_family  # noqa: F401  (the family names and their type)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32/float16/bfloat16 accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_active(z: torch.Tensor) -> bool:
    """Whether a torch.autocast region is active for z's device type (never on a device type that
    autocast does not know, such as "meta")."""
    try:
        return torch.is_autocast_enabled(z.device.type)
    except RuntimeError:
        return False


def check_inputs(z, mu, logvar) -> tuple[int, int, int]:
    """Validate queries z [M, D] and components mu, logvar [K, D]; return (M, K, D)."""
    for name, t in (("z", z), ("mu", mu), ("logvar", logvar)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), got {t.dtype}; "
                f"convert it with {name}.float()"
            )
        if t.ndim != 2:
            raise ValueError(
                f"{name} must be 2-D ([M, D] for z, [K, D] for mu and logvar), got shape {tuple(t.shape)}; "
                "flatten the latent dimensions first"
            )
    if not (z.dtype == mu.dtype == logvar.dtype):
        raise TypeError(
            f"z, mu and logvar must share one dtype, got z={z.dtype}, mu={mu.dtype}, logvar={logvar.dtype}; "
            "cast them explicitly (nothing is cast silently)"
        )
    if not (z.device == mu.device == logvar.device):
        raise ValueError(
            f"z, mu and logvar must be on one device, got z on {z.device}, mu on {mu.device}, "
            f"logvar on {logvar.device}; move them with .to(device)"
        )
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape [K, D], got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    m, d = z.shape
    k, d2 = mu.shape
    if d != d2:
        raise ValueError(f"z has D={d} latent dimensions but mu/logvar have D={d2}; they must match")
    if m == 0:
        raise ValueError("z is an empty batch (M=0); pass at least one query row")
    if k == 0:
        raise ValueError("mu/logvar hold no components (K=0); pass at least one component row")
    if d == 0:
        raise ValueError("the latent dimension D is 0; z, mu and logvar need at least one column")
    return m, k, d


def check_estimator(estimator, dataset_size) -> None:
    """Validate the estimator name and the dataset size on their own (no batch yet)."""
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if dataset_size is None:
        if estimator != "uniform":
            raise ValueError(
                f"dataset_size is required for estimator={estimator!r}: pass the number of training examples N"
            )
        return
    _check_int("dataset_size", dataset_size, minimum=1)


def check_family(family) -> None:
    """Validate the posterior family name (tcvae_kernels.families.get_family's ValueError)."""
    get_family(family)


def check_estimator_args(estimator, dataset_size, num_queries: int, num_components: int, offset: int = 0) -> None:
    """Validate the estimator and dataset size for M queries and K components."""
    check_estimator(estimator, dataset_size)
    if estimator == "uniform":
        return
    m, k = num_queries, num_components
    if dataset_size < max(m, k):
        raise ValueError(
            f"dataset_size (N={dataset_size}) must be at least the batch size "
            f"(M={m} queries, K={k} components): N is the size of the whole data set"
        )
    if estimator == "mss":
        if k < 2:
            raise ValueError(
                "estimator='mss' needs a batch of at least 2 components (it weights the others by 1/(K-1)); "
                "use estimator='mws' for a single sample"
            )
        if offset < 0 or offset + m > k:
            raise ValueError(
                f"estimator='mss' needs each query to be drawn from its own component: queries "
                f"{offset}..{offset + m - 1} must index the K={k} components (M <= K)"
            )


def check_weight(name: str, value) -> float:
    """A loss weight: a finite real number, as a float (TypeError / ValueError naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_batch(z, mu, logvar) -> None:
    """A batch of the losses: :func:`check_inputs`, and z of mu's shape [M, D] (query i drawn from row i)."""
    check_inputs(z, mu, logvar)
    if z.shape != mu.shape:
        raise ValueError(f"z, mu, logvar must share one shape [M, D], got {tuple(z.shape)}, {tuple(mu.shape)}, "
                         f"{tuple(logvar.shape)}")


def _check_int(name: str, value, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def normalize_groups(groups, d: int) -> list[list[int]]:
    """A partition of the D latent dimensions, given as sizes ``[2, 3, 5]`` (contiguous groups in
    order) or as index lists ``[[0, 3], [1, 2, 4]]``, as a list of index lists."""
    if isinstance(groups, torch.Tensor):
        groups = groups.tolist()
    if not isinstance(groups, (list, tuple)) or len(groups) == 0:
        raise ValueError(f"groups must be a non-empty list of group sizes or of index lists, got {groups!r}")
    if all(isinstance(g, int) and not isinstance(g, bool) for g in groups):
        if any(g < 1 for g in groups) or sum(groups) != d:
            raise ValueError(f"group sizes must be positive and sum to D={d}, got {list(groups)}")
        out, start = [], 0
        for g in groups:
            out.append(list(range(start, start + g)))
            start += g
        return out
    if not all(isinstance(g, (list, tuple)) and g and all(isinstance(i, int) and not isinstance(i, bool) for i in g)
               for g in groups):
        raise ValueError(f"groups must be all sizes (ints) or all non-empty index lists, got {groups!r}")
    flat = sorted(i for g in groups for i in g)
    if flat != list(range(d)):
        raise ValueError(f"index-list groups must partition range(D={d}): each dimension exactly once, got {groups!r}")
    return [list(g) for g in groups]
