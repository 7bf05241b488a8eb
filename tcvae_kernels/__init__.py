"""tcvae_kernels: the β-TCVAE total-correlation loss with fused kernels.

Public API::

    log_qz(z, mu, logvar, *, dataset_size, estimator="mss", backend="auto") -> LogQz(log_qz, log_qz_dims)
    decompose(z, mu, logvar, *, dataset_size, ...) -> Decomposition(mi, tc, dim_kl)
    total_correlation(z, mu, logvar, *, dataset_size, ...) -> scalar
    BetaTCVAELoss(dataset_size, alpha=1.0, beta=6.0, gamma=1.0, estimator="mss", backend="auto")
    available_backends()

The math is written once, in :mod:`tcvae_kernels.reference`.
"""

from .api import Decomposition, LogQz, decompose, log_qz, total_correlation
from .dispatch import BACKEND_NAMES, BackendNotSupportedError, available_backends
from .estimators import ESTIMATORS, LogWeights, log_weights
from .loss import BetaTCVAELoss
from . import ops as _ops  # noqa: F401  (registers the compiled backends)
from . import data, evaluate, metrics

__version__ = "0.1.0"

__all__ = [
    "BACKEND_NAMES",
    "ESTIMATORS",
    "BackendNotSupportedError",
    "BetaTCVAELoss",
    "Decomposition",
    "LogQz",
    "LogWeights",
    "available_backends",
    "decompose",
    "log_qz",
    "log_weights",
    "total_correlation",
    "data",
    "evaluate",
    "metrics",
]
