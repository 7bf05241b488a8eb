"""The ``cpu`` backend: the fused C++ kernel of csrc/tcvae_cpu.cpp (``torch.ops.tcvae.*`` on CPU
tensors; schemas, fake kernels and autograd in extension.py)."""

from __future__ import annotations

import itertools

import torch

from .base import group_columns, needs_grad, op_grad_components, register_backend
from .extension import ExtensionBackend


@register_backend
class CpuBackend(ExtensionBackend):
    device_type = "cpu"  # also its name; "auto"'s first choice on CPU tensors
    description = "fused C++ kernel (at::parallel_for, at::vec SIMD), O(M·D) memory"

    def log_qz_groups(self, z, mu, logvar, weights, groups, deterministic=False, family="normal",
                      grad_components=None):
        """One pass of ``tcvae::log_qz_groups``: the columns are permuted so that the groups of
        several (not all) dimensions are contiguous; groups of one dimension are columns of
        log_qz_dims and a group of all dimensions is log_qz, as in the default."""
        d = z.shape[1]
        fused = [g for g in groups if 1 < len(g) < d]
        if not fused:
            return super().log_qz_groups(z, mu, logvar, weights, groups, deterministic, family, grad_components)
        order = [i for g in fused for i in g]
        taken = set(order)
        order += [i for i in range(d) if i not in taken]
        ends = list(itertools.accumulate(len(g) for g in fused))
        permuted = order != list(range(d))
        if permuted:
            perm = torch.as_tensor(order, device=z.device)
            z, mu, logvar = (t.index_select(1, perm) for t in (z, mu, logvar))
        q, qd, qg, *_ = torch.ops.tcvae.log_qz_groups(z, mu, logvar, ends, *weights.op_args(), family,
                                                      needs_grad(z, mu, logvar),
                                                      op_grad_components(grad_components))
        if permuted:  # back to the caller's order of dimensions
            qd = qd.index_select(1, torch.as_tensor(sorted(range(d), key=order.__getitem__), device=z.device))
        return q, qd, group_columns(groups, q, qd, lambda k, g: qg[:, k])
