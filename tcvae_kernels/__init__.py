"""tcvae_kernels: the β-TCVAE total-correlation loss with fused kernels.

Public API::

    log_qz(z, mu, logvar, *, dataset_size, estimator="mss", backend="auto") -> LogQz(log_qz, log_qz_dims)
    decompose(z, mu, logvar, *, dataset_size, ...) -> Decomposition(mi, tc, dim_kl)
    total_correlation(z, mu, logvar, *, dataset_size, ...) -> scalar
    self_share(z, mu, logvar, *, dataset_size, ...) -> [M]: the estimator's regime (loss.last.self_share)
    EstimatorOptions(*, dataset_size, estimator, backend, ...): the options above, as one object (options=)
    ComponentBank(size): detached components of recent batches, more components for the estimates (bank=)
    BetaTCVAELoss(*, alpha=1.0, beta=6.0, gamma=1.0, ..., **estimator_options): the options as keywords (dataset_size=N, ...)
    BetaVAELoss(beta), FactorVAELoss(gamma, latent_dim=...), HFVAELoss(*, groups, ..., **estimator_options)
    grouped_decompose(z, mu, logvar, groups=..., dataset_size=...) -> GroupedDecomposition
    available_backends(), compiled_backends(), backend_status()

The math is written once, in :mod:`tcvae_kernels.reference`. Layout: the public API and the losses
here; the modules ``data`` (ground-truth data sets), ``dataset_estimates`` (MI / TC / dim-KL and
latent entropies over a whole data set) and ``metrics`` (disentanglement metrics), public as
``tk.data``, ``tk.dataset_estimates``, ``tk.metrics``; ``backends/`` (each backend beside its kernel,
registered with its device priorities), ``tools/`` (the commands check, bench).
"""

from .api import (
    Decomposition,
    GroupedDecomposition,
    LogQz,
    LogQzGroups,
    Prior,
    decompose,
    grouped_decompose,
    log_qz,
    self_share,
    total_correlation,
)
from .bank import ComponentBank
from .backends.base import backend_names
from .dispatch import BackendNotSupportedError, available_backends, backend_status, compiled_backends
from .estimators import ESTIMATORS, LogWeights, log_weights
from .options import EstimatorKwargs, EstimatorOptions
from .loss import (
    BetaTCVAELoss,
    BetaTCVAETerms,
    BetaVAELoss,
    BetaVAETerms,
    EstimatorRegimeWarning,
    FactorVAELoss,
    FactorVAETerms,
    HFVAELoss,
    HFVAETerms,
    default_discriminator,
    permute_dims,
)
from . import data, dataset_estimates, metrics

from ._version import __version__

__all__ = [
    "ESTIMATORS",
    "EstimatorOptions",
    "ComponentBank",
    "EstimatorKwargs",
    "BackendNotSupportedError",
    "BetaTCVAELoss",
    "BetaVAELoss",
    "FactorVAELoss",
    "GroupedDecomposition",
    "HFVAELoss",
    "LogQzGroups",
    "Prior",
    "default_discriminator",
    "grouped_decompose",
    "permute_dims",
    "Decomposition",
    "LogQz",
    "LogWeights",
    "available_backends",
    "backend_names",
    "backend_status",
    "compiled_backends",
    "decompose",
    "log_qz",
    "log_weights",
    "total_correlation",
    "self_share",
    "BetaTCVAETerms",
    "HFVAETerms",
    "BetaVAETerms",
    "FactorVAETerms",
    "EstimatorRegimeWarning",
    "data",
    "dataset_estimates",
    "metrics",
]
