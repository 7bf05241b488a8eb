"""Global-batch estimation across data-parallel ranks (torch.distributed: NCCL on GPUs, Gloo on CPUs).

Each rank keeps its M_local queries z and gathers the components (mu, logvar) of all ranks with a
differentiable all-gather, so every rank evaluates log q(z_i) against the M_global components of
the global batch (the op's K ≠ M path), with the estimator's weights defined on the global batch
and query i of rank r located at global index r·M_local + i (the op's ``offset``). Gradients of
the gathered components flow back to the ranks that own them (the all-gather's backward sums the
contributions of every rank). Per step and rank: one all-gather of 2·M_global·D floats (mu and
logvar) plus one of the ranks' batch sizes. Memory per rank: O((M_local + M_global)·D).
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
    """(mu_global [M_global, D], logvar_global [M_global, D], offset of this rank's rows), gathered in
    rank order with gradients flowing back to the owning ranks. Every rank must hold the same batch size."""
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
    return _all_gather_rows(mu, process_group), _all_gather_rows(logvar, process_group), rank * mu.shape[0]


def _all_gather_rows(t: torch.Tensor, group) -> torch.Tensor:
    """Differentiable all-gather along dim 0 (backward: the gradient slices of every rank summed
    into the owner's), with the newest of torch's spellings this installation has."""
    import torch.distributed._functional_collectives as fc

    for name in ("all_gather_single_autograd", "all_gather_tensor_autograd"):  # torch >= 2.12, older
        fn = getattr(fc, name, None)
        if fn is not None:
            return fn(t.contiguous(), gather_dim=0, group=group)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous(), group=group), dim=0)
