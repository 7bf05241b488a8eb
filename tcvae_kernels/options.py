"""One options object for every estimate of q(z).

The public functions (:func:`~tcvae_kernels.log_qz`, :func:`~tcvae_kernels.decompose`,
:func:`~tcvae_kernels.total_correlation`, :func:`~tcvae_kernels.grouped_decompose`) and the losses
(:class:`~tcvae_kernels.BetaTCVAELoss`, :class:`~tcvae_kernels.HFVAELoss`) take the fields of
:class:`EstimatorOptions` as keywords, or one ``options=EstimatorOptions(...)``; the fields, their
defaults and their documentation are written here only (:func:`takes_options` derives each
function's signature and the options part of its docstring from them).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any


@dataclasses.dataclass(frozen=True)
class EstimatorOptions:
    """How log q(z) is estimated.

    Options:
        dataset_size: N, the number of training examples (required by "mss" and "mws").
        estimator: "mss" (stratified), "mws" (weighted) or "uniform" (plain mixture, -log K); see
            :mod:`tcvae_kernels.estimators`.
        backend: "auto" or a registered backend name ("torch", "cpu", "cuda", "triton"; see
            ``tcvae_kernels.BACKEND_NAMES``).
        check_finite: raise ValueError on NaN/inf inputs (a device sync on GPUs); otherwise
            non-finite inputs propagate to the outputs.
        deterministic: the same bits in every process, not just run to run: Triton launches a
            fixed kernel configuration instead of the autotuner's pick (which is by timing); every
            other backend is deterministic without it (docs: "Determinism").
        process_group: a torch.distributed group (e.g. ``torch.distributed.group.WORLD``): the
            components are the (mu, logvar) of every rank's batch, gathered differentiably, and the
            weights are those of the global batch; this rank's queries are rows offset by
            rank·M_local (see tcvae_kernels.distributed); ``dataset_size`` stays the size of the
            whole data set. None: this process's batch only.
    """

    dataset_size: int | None = None
    estimator: str = "mss"
    backend: str = "auto"
    check_finite: bool = False
    deterministic: bool = False
    process_group: Any = None

    def validate(self) -> "EstimatorOptions":
        """Check the fields that do not depend on a batch (estimator, dataset_size, backend name);
        the per-batch checks run on each call. Returns self."""
        from ._validation import check_estimator
        from .dispatch import check_backend_name

        check_estimator(self.estimator, self.dataset_size)
        check_backend_name(self.backend)
        return self


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(EstimatorOptions))
_OPTIONS_DOC = EstimatorOptions.__doc__.split("Options:", 1)[1].strip("\n").rstrip()


def resolve_options(options, given: dict) -> EstimatorOptions:
    """``options=`` or the option keywords ``given`` (not both) as one EstimatorOptions."""
    if options is None:
        return EstimatorOptions(**given)
    if not isinstance(options, EstimatorOptions):
        raise TypeError(f"options must be a tcvae_kernels.EstimatorOptions, got {type(options).__name__}")
    if given:
        raise TypeError(f"pass either options= or the keywords {sorted(given)}, not both "
                        "(dataclasses.replace(options, ...) changes some fields of an options object)")
    return options


def takes_options(fn):
    """``fn(z, mu, logvar, opts, *, <own keywords>)`` as the public
    ``f(z, mu, logvar, *, <own keywords>, <EstimatorOptions fields>, options=None)``; the options
    part of the docstring (an ``{options}`` placeholder) is filled from EstimatorOptions."""
    params = list(inspect.signature(fn).parameters.values())
    kw = inspect.Parameter.KEYWORD_ONLY
    fields = [inspect.Parameter(f.name, kw, default=f.default) for f in dataclasses.fields(EstimatorOptions)]
    public = params[:3] + params[4:] + fields + [inspect.Parameter("options", kw, default=None)]

    @functools.wraps(fn)
    def wrapper(z, mu, logvar, *, options=None, **kwargs):
        given = {k: kwargs.pop(k) for k in OPTION_NAMES if k in kwargs}
        return fn(z, mu, logvar, resolve_options(options, given), **kwargs)

    wrapper.__signature__ = inspect.Signature(public, return_annotation=inspect.signature(fn).return_annotation)
    wrapper.__doc__ = (fn.__doc__ or "").replace(
        "{options}", _OPTIONS_DOC + "\n        options: an EstimatorOptions holding the fields above (instead of them).")
    return wrapper
