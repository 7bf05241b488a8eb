"""Global-batch estimation across data-parallel ranks (torch.distributed: NCCL on GPUs, Gloo on CPUs).

Each rank keeps its M_local queries z and gathers the components (mu, logvar) of all ranks with a
differentiable all-gather, so every rank evaluates log q(z_i) against the M_global components of
the global batch (the op's K ≠ M path), with the estimator's weights defined on the global batch
and query i of rank r located at global index r·M_local + i (the op's ``offset``). Gradients of
the gathered components flow back to the ranks that own them (the all-gather's backward sums the
contributions of every rank). Per step and rank: one all-gather of 2·M_global·D floats (mu and
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
    (the gradients of the gathered rows flow back to the ranks that own them).

    Args:
        mu, logvar: this rank's components [M_local, D].
        process_group: a ``torch.distributed`` group (every rank calls this collectively).

    Returns:
        ``(mu_global [M_global, D], logvar_global [M_global, D], offset)``, M_global = world·M_local;
        offset = rank·M_local, the global index of this rank's first row.

    Raises:
        ValueError: the ranks hold components of different shapes (use ``drop_last=True``).
        RuntimeError: torch.distributed is unavailable or not initialised.
    """
    dist = _dist()
    world = dist.get_world_size(process_group)
    rank = dist.get_rank(process_group)
    shape = torch.tensor(list(mu.shape), device=mu.device, dtype=torch.int64)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=process_group)
    shapes = [tuple(int(v) for v in s.tolist()) for s in shapes]
    if len(set(shapes)) != 1:
        raise ValueError(f"every rank must hold components of one shape [M_local, D] for the global-batch estimator, "
                         f"got {shapes}; use drop_last=True in the DataLoader")
    d = mu.shape[1]
    both = _all_gather_rows(torch.cat([mu, logvar], dim=1), process_group)  # one collective: [M_global, 2D]
    return both[:, :d], both[:, d:], rank * mu.shape[0]


class _AllGatherRows(torch.autograd.Function):
    """Differentiable all-gather along dim 0: forward [M_local, C] -> [world·M_local, C] in rank
    order; backward: the sum over ranks of the gradient of the gathered tensor, this rank's rows
    (a reduce-scatter with NCCL, an all-reduce then a slice elsewhere — Gloo has no reduce-scatter).

    The graph node keeps no reference to the default group (it is looked up when used) and drops
    any other group once its backward has run: a ProcessGroup object outliving
    destroy_process_group is destroyed during interpreter shutdown, where its worker threads make
    the process abort ("terminate called without an active exception"; seen with torch's own
    autograd all-gathers, which hold the group in their nodes, in about 1 of 4 runs on Gloo)."""

    @staticmethod
    def forward(ctx, t, group):
        import torch.distributed as dist

        world, rank = dist.get_world_size(group), dist.get_rank(group)
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t, group=group)
        ctx.group = None if group is None or group is dist.group.WORLD else group
        ctx.rows = (rank * t.shape[0], (rank + 1) * t.shape[0])
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        group, ctx.group = ctx.group, None  # release the group (see the class docstring)
        grad = grad.contiguous()
        lo, hi = ctx.rows
        if dist.get_backend(group) == "nccl":
            out = grad.new_empty((hi - lo,) + tuple(grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, group=group)
            return out, None
        total = grad.clone()
        dist.all_reduce(total, group=group)
        return total[lo:hi], None


def _all_gather_rows(t: torch.Tensor, group) -> torch.Tensor:
    """Differentiable all-gather along dim 0 (backward: the gradient slices of every rank summed
    into the owner's)."""
    return _AllGatherRows.apply(t.contiguous(), group)
