"""Log importance weights of the minibatch estimators of q(z).

Every estimator here is *structured*: the weight of component ``j`` for query ``i``
takes one of three values, so kernels read three scalars instead of an M×K matrix.
With ``s_i = i + offset`` (the component query ``i`` was sampled from) and
``n_i = (s_i + 1) mod K``::

    w[i, j] = w_self    if j == s_i                      (only when 0 <= s_i < K)
            = w_next    if j == n_i and j != s_i          (only when 0 <= s_i < K)
            = w_other   otherwise

K is the number of components (the minibatch size when K = M), N the dataset size.

* ``"mws"`` (minibatch weighted sampling, Chen et al. 2018, eq. 8 of the appendix):
  ``w = -log(N·K)`` everywhere.
* ``"mss"`` (minibatch stratified sampling): ``w_self = log(1/N)``,
  ``w_next = log((N-K+1) / (N·(K-1)))``, ``w_other = log(1/(K-1))``; each row sums to 1.
  The authors' public code fills a *column* with the self weight (a strided-index slip);
  here the self weight sits on the diagonal (``j == s_i``) as the paper intends.
* ``"uniform"``: ``w = -log K`` everywhere, i.e. ``q(z) = (1/K) Σ_j q(z | x_j)``: the exact
  mixture over the given components (the aggregate posterior when they are the whole data set).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, get_args

import torch

#: Names of the estimators, "mss" (minibatch stratified sampling), "mws" (minibatch weighted sampling) and
#: "uniform" (the plain mixture, weight -log K): the one list, as the type of ``estimator=``.
Estimator = Literal["mss", "mws", "uniform"]
#: The estimators' names as a tuple, in that order (the values of :data:`Estimator`).
ESTIMATORS: tuple[str, ...] = get_args(Estimator)


class LogWeights(NamedTuple):
    """The three log weights (self, next, other) of a structured estimator, and the offset
    ``s_i - i`` locating each query's own component (0 for a plain minibatch)."""

    w_self: float
    w_next: float
    w_other: float
    offset: int = 0

    def op_args(self) -> tuple[list[float], int]:
        """``(weights, offset)`` as every kernel op takes them (the C++/CUDA schemas' ``float[] weights,
        int offset``, parsed by ``tcvae::parse_log_weights`` in csrc/tcvae_math.h; the Triton op's
        same two arguments): weights = [w_self, w_next, w_other]. The one place that knows the layout."""
        return [float(self.w_self), float(self.w_next), float(self.w_other)], int(self.offset)

    @classmethod
    def from_op_args(cls, weights, offset: int) -> "LogWeights":
        """The inverse of :meth:`op_args` (for the Python kernels' host code and the fake kernels)."""
        if len(weights) != 3:
            raise ValueError(f"weights must be [w_self, w_next, w_other], got {list(weights)!r}")
        return cls(float(weights[0]), float(weights[1]), float(weights[2]), int(offset))


def log_weights(estimator: str, num_components, dataset_size: int | None, offset: int = 0) -> LogWeights:
    """The structured log weights of an estimator (the weight contract every op takes).

    Args:
        estimator: "mss", "mws" or "uniform" (:data:`~tcvae_kernels.estimators.ESTIMATORS`).
        num_components: K, the components of the mixture (K >= 2 for "mss"): an int, or a 0-dim
            integer tensor (a component bank's fill level: the weights are then float64 tensors on its
            device, computed there without reading K on the host).
        dataset_size: N (>= K for "mss"); unused by "uniform".
        offset: s_i - i, the index of query i's own component minus i (0 for a minibatch).

    Returns:
        :class:`LogWeights` ``(w_self, w_next, w_other, offset)``: "mws" ``-log(N·K)`` everywhere;
        "mss" ``w_self = -log N``, ``w_next = log(N-K+1) - log N - log(K-1)``,
        ``w_other = -log(K-1)``; "uniform" ``-log K`` everywhere.

    Raises:
        ValueError: an unknown estimator (the other arguments are not validated here: the public
            functions do it first).
    """
    k = num_components
    log = math.log
    if isinstance(k, torch.Tensor):
        k, log = k.to(torch.float64), torch.log
    if estimator == "mws":
        w = -math.log(dataset_size) - log(k)
        return LogWeights(w, w, w, offset)
    if estimator == "mss":
        n = dataset_size
        w_self = -math.log(n)
        w_next = log(n - k + 1) - math.log(n) - log(k - 1)
        w_other = -log(k - 1)
        return LogWeights(w_self, w_next, w_other, offset)
    if estimator == "uniform":
        w = -log(k)
        return LogWeights(w, w, w, offset)
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def weight_matrix(
    weights: LogWeights, num_queries: int, num_components: int, *, row_start: int = 0, dtype=torch.float64, device=None
) -> torch.Tensor:
    """Dense [M, K] log weights of queries ``row_start .. row_start+M-1``, for the reference and
    tests (kernels never build it)."""
    m, k = num_queries, num_components
    w = torch.full((m, k), weights.w_other, dtype=dtype, device=device)
    if weights.w_self == weights.w_next == weights.w_other:
        return w
    rows = torch.arange(m, device=device)
    s = rows + row_start + weights.offset
    own = (s >= 0) & (s < k)
    rows, s = rows[own], s[own]
    w[rows, (s + 1) % k] = weights.w_next
    w[rows, s] = weights.w_self  # written last: self wins when K == 1
    return w
