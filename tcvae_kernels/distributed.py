"""Global-batch estimation across data-parallel ranks (torch.distributed: NCCL on GPUs, Gloo on CPUs).

Each rank keeps its M_local queries z and gathers the components (mu, logvar) of all ranks with a
differentiable all-gather, so every rank evaluates log q(z_i) against the M_global components of
the global batch (the op's K ≠ M path), with the estimator's weights defined on the global batch
and query i of rank r located at global index sum_{r' < r} M_r' + i (the op's ``offset``). Gradients of
the gathered components flow back to the ranks that own them (the all-gather's backward sums the
contributions of every rank). Ranks may hold different batch sizes (rows padded to the largest for the
collective); :func:`batch_share` is the loss scale that makes DDP's gradient average the global
batch's mean then. Per step and rank: one all-gather of 2·world·max_r M_r·D floats (mu and
logvar side by side) plus one of the ranks' batch shapes, and in the backward the same volume
reduced (a reduce-scatter with NCCL, an all-reduce with Gloo). Memory per rank: O((M_local + M_global)·D).
"""

from __future__ import annotations

import torch


def _dist():
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("process_group was given but torch.distributed is not available in this build")
    if not dist.is_initialized():
        raise RuntimeError("process_group was given but torch.distributed is not initialized "
                           "(call torch.distributed.init_process_group first)")
    return dist


def gather_components(mu: torch.Tensor, logvar: torch.Tensor, process_group) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The global batch's components, gathered in rank order by one differentiable all-gather
    (the gradients of the gathered rows flow back to the ranks that own them). Ranks may hold
    different batch sizes M_r (an epoch's last, shorter batch): the rows are padded to max_r M_r
    for the collective and cut back.

    Args:
        mu, logvar: this rank's components [M_r, D].
        process_group: a ``torch.distributed`` group (every rank calls this collectively).

    Returns:
        ``(mu_global [M_global, D], logvar_global [M_global, D], offset)``, M_global = sum_r M_r;
        offset = sum_{r' < rank} M_r', the global index of this rank's first row.

    Raises:
        ValueError: the ranks' D differ, or a rank holds no rows (its terms, means over its
            queries, would be 0/0; skip the step on every rank instead); raised on every rank alike.
        RuntimeError: torch.distributed is unavailable or not initialised.
    """
    dist = _dist()
    world = dist.get_world_size(process_group)
    rank = dist.get_rank(process_group)
    sizes = _batch_shapes(tuple(mu.shape), mu.device, process_group, world)
    if len({d for _, d in sizes}) != 1:
        raise ValueError(f"every rank must hold components of one D for the global-batch estimator, got shapes "
                         f"{[list(s) for s in sizes]} ([M_r, D] per rank)")
    if any(m == 0 for m, _ in sizes):
        raise ValueError(f"a rank holds an empty batch (batch sizes per rank: {[m for m, _ in sizes]}); its terms "
                         "are means over its own queries: skip the step on every rank, or drop the empty batch")
    counts = [m for m, _ in sizes]
    d = mu.shape[1]
    both = _all_gather_rows(torch.cat([mu, logvar], dim=1), process_group, counts)  # one collective: [M_global, 2D]
    return both[:, :d], both[:, d:], sum(counts[:rank])


def _batch_shapes(shape: tuple[int, ...], device, group, world: int) -> list[tuple[int, ...]]:
    """Every rank's ``shape``, read on the host (one small collective of a tensor on ``device``)."""
    dist = _dist()
    shape = torch.tensor(list(shape), device=device, dtype=torch.int64)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    return [tuple(int(v) for v in s.tolist()) for s in shapes]


def batch_share(batch_size: int, process_group, device=None) -> float:
    """The factor by which a rank scales its loss so that DDP's gradient average (the mean over
    ranks of each rank's gradient) is the gradient of the global batch's mean, sum_i f_i / M_global,
    when ranks hold different batch sizes M_r (each rank's loss being a mean over its own M_r
    samples, as this package's losses are). Collective (every rank calls it); reads the sizes on
    the host.

    Args:
        batch_size: this rank's batch size M_r.
        process_group: a ``torch.distributed`` group.
        device: where the collective's small tensor lives (a CUDA device with NCCL; default CPU).

    Returns:
        ``world · M_r / M_global`` (a float; 1.0 when every rank holds the same size).

    Raises:
        ValueError: ``batch_size`` is not a non-negative int, or every rank's is 0."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int (this rank's batch size), got {batch_size!r}")
    dist = _dist()
    world = dist.get_world_size(process_group)
    total = sum(m for (m,) in _batch_shapes((batch_size,), device, process_group, world))
    if total == 0:
        raise ValueError("every rank's batch_size is 0")
    return world * batch_size / total


class _AllGatherRows(torch.autograd.Function):
    """Differentiable all-gather along dim 0 of ``counts[r]`` rows per rank (padded to the largest
    for the collective): forward [M_r, C] -> [sum_r M_r, C] in rank order; backward: the sum over
    ranks of the gradient of the gathered tensor, this rank's rows (a reduce-scatter with NCCL, an
    all-reduce then a slice elsewhere — Gloo has no reduce-scatter).

    The graph node keeps no reference to the default group (it is looked up when used) and drops
    any other group once its backward has run: a ProcessGroup object outliving
    destroy_process_group is destroyed during interpreter shutdown, where its worker threads make
    the process abort ("terminate called without an active exception"; seen with torch's own
    autograd all-gathers, which hold the group in their nodes, in about 1 of 4 runs on Gloo)."""

    @staticmethod
    def forward(ctx, t, group, counts):
        import torch.distributed as dist

        rank, top = dist.get_rank(group), max(counts)
        padded = _pad_rows(t, top)
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded, group=group)
        ctx.group = None if group is None or group is dist.group.WORLD else group
        ctx.counts, ctx.rank = tuple(counts), rank
        return torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        group, ctx.group = ctx.group, None  # release the group (see the class docstring)
        counts, rank = ctx.counts, ctx.rank
        top = max(counts)
        pieces = grad.contiguous().split(list(counts), dim=0)
        padded = torch.cat([_pad_rows(p, top) for p in pieces])  # a copy: all_reduce works in place
        if dist.get_backend(group) == "nccl":
            out = padded.new_empty((top,) + tuple(padded.shape[1:]))
            dist.reduce_scatter_tensor(out, padded, group=group)
            return out[:counts[rank]], None, None
        dist.all_reduce(padded, group=group)
        return padded[rank * top: rank * top + counts[rank]], None, None


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with zero rows appended up to ``rows`` (``t`` itself when it has them)."""
    return t if t.shape[0] == rows else torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])


def _all_gather_rows(t: torch.Tensor, group, counts) -> torch.Tensor:
    """Differentiable all-gather along dim 0 of ``counts[r]`` rows per rank (backward: the gradient
    slices of every rank summed into the owner's)."""
    return _AllGatherRows.apply(t.contiguous(), group, list(counts))
