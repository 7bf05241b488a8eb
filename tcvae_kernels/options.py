"""One options object for every estimate of q(z).

The public functions (:func:`~tcvae_kernels.log_qz`, :func:`~tcvae_kernels.decompose`,
:func:`~tcvae_kernels.total_correlation`, :func:`~tcvae_kernels.grouped_decompose`) and the losses
(:class:`~tcvae_kernels.BetaTCVAELoss`, :class:`~tcvae_kernels.HFVAELoss`) take the fields of
:class:`EstimatorOptions` as keywords (``**estimator_options: Unpack[EstimatorKwargs]``), or one
``options=EstimatorOptions(...)``. The fields, their types, defaults and documentation are written
here only. Adding an option is one edit here: the field with its ``Options:`` line, and the same
name and type in :class:`EstimatorKwargs`, the static mirror type checkers need for ``**estimator_options``
(PEP 692 unpacks only a TypedDict; tests/estimates/test_typing.py keeps the two equal); every function and
loss forwards ``**estimator_options`` and :func:`options_doc` fills their docstrings.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict, Unpack

from ._docs import fill_doc
from ._validation import Family, check_estimator, check_family
from .backends.base import check_backend_name
from .bank import ComponentBank, check_bank
from .estimators import Estimator


@dataclasses.dataclass(frozen=True, kw_only=True)
class EstimatorOptions:
    """How log q(z) is estimated; every field a keyword (``EstimatorOptions(dataset_size=N)``).

    Options:
        dataset_size: N, the number of training examples (required by "mss" and "mws").
        estimator: "mss" (stratified), "mws" (weighted) or "uniform" (plain mixture, -log K); see
            :mod:`tcvae_kernels.estimators`.
        family: the posterior family of the components: "normal" (the third argument is the
            log-variance log σ²) or "laplace" (the third argument is the log-scale b = log(scale) of
            the authors' ``-dist laplace``, passed as it is: not a log-variance, a Laplace's variance
            is ``2·exp(2b)``); ``l = -|z - mu|·exp(-b) - b - log 2`` (:mod:`tcvae_kernels.reference`).
        backend: "auto" or a registered backend name ("torch", "cpu", "cuda", "triton"; see
            ``tcvae_kernels.backend_names()``).
        check_finite: raise ValueError on NaN/inf inputs (a device sync on GPUs); otherwise
            non-finite inputs propagate to the outputs.
        deterministic: the same bits in every process, not just run to run: Triton launches a
            fixed kernel configuration instead of the autotuner's pick (which is by timing); every
            other backend is deterministic without it (docs/determinism.md).
        process_group: a torch.distributed group (e.g. ``torch.distributed.group.WORLD``): the
            components are the (mu, logvar) of every rank's batch, gathered differentiably, and the
            weights are those of the global batch; this rank's queries are the rows after the
            lower ranks' (their batch sizes may differ; see tcvae_kernels.distributed, and its
            ``batch_share`` for DDP's averaging); ``dataset_size`` stays the size of the
            whole data set. None: this process's batch only.
        bank: a :class:`~tcvae_kernels.ComponentBank` of detached components of earlier batches
            (only read here): the components are the batch's (query i drawn from component i) then
            the bank's, K = M + len(bank) (M_global with a process group), with the estimator's
            weights for that K; K must not exceed ``dataset_size`` ("mss", "mws"). It shrinks the
            minibatch bias at no network memory (docs/estimators.md, "A component bank"); the bank's
            family must be ``family``. None: the batch's components only.
    """

    dataset_size: int | None = None
    estimator: Estimator = "mss"
    family: Family = "normal"
    backend: str = "auto"
    check_finite: bool = False
    deterministic: bool = False
    process_group: Any = None
    bank: ComponentBank | None = None

    def validate(self) -> "EstimatorOptions":
        """Check the fields that do not depend on a batch (estimator, dataset_size, family, backend
        name, the bank's type and family); the per-batch checks run on each call. Returns self.

        Raises:
            ValueError: an unknown estimator, family or backend name, a missing dataset_size, a bank
                of another family.
            TypeError: a bank that is no ComponentBank."""
        check_estimator(self.estimator, self.dataset_size)
        check_family(self.family)
        check_backend_name(self.backend)
        check_bank(self.bank, self.family)
        return self

    def replace(self, **changes: Unpack["EstimatorKwargs"]) -> "EstimatorOptions":
        """A copy with the given fields changed, validated: ``loss.options = loss.options.replace(estimator="mws")``.

        Raises:
            TypeError: a keyword that is no option.
            ValueError: as :meth:`validate`."""
        _check_option_names(changes)
        return dataclasses.replace(self, **changes).validate()


class EstimatorKwargs(TypedDict, total=False):
    """The fields of :class:`EstimatorOptions` as keyword arguments: the public functions take
    ``**estimator_options: Unpack[EstimatorKwargs]``, so type checkers see every option (a misspelled one is an
    error). Same names, types and meaning as the dataclass (tests/estimates/test_typing.py keeps them equal)."""

    dataset_size: int | None
    estimator: Estimator
    family: Family
    backend: str
    check_finite: bool
    deterministic: bool
    process_group: Any
    bank: ComponentBank | None


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(EstimatorOptions))
_OPTIONS_DOC = EstimatorOptions.__doc__.split("Options:", 1)[1].strip("\n").rstrip()


def _check_option_names(given) -> None:
    unknown = sorted(set(given) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; the options are {list(OPTION_NAMES)}")


def resolve_options(options: EstimatorOptions | None, given: dict[str, Any]) -> EstimatorOptions:
    """``options=`` or the option keywords ``given`` (not both) as one EstimatorOptions; raises
    TypeError on a keyword that is no option."""
    _check_option_names(given)
    if options is None:
        return EstimatorOptions(**given)
    if not isinstance(options, EstimatorOptions):
        raise TypeError(f"options must be a tcvae_kernels.EstimatorOptions, got {type(options).__name__}")
    if given:
        raise TypeError(f"pass either options= or the keywords {sorted(given)}, not both "
                        "(options.replace(...) changes some fields of an options object)")
    return options


#: fills the ``{options}`` placeholder of a docstring with the fields' documentation
options_doc = fill_doc(
    options=_OPTIONS_DOC + "\n        options: an EstimatorOptions holding the fields above (instead of them).")
