"""The ``triton`` backend: the adapter of the kernels in triton_kernels.py (imported on first use,
so a missing triton only makes this backend unavailable)."""

from __future__ import annotations

import importlib.util
import os

import torch

from .base import Backend, needs_grad, op_grad_components, register_backend


@register_backend
class TritonBackend(Backend):
    name = "triton"
    description = "fused Triton kernels (tcvae_kernels/backends/triton_kernels.py), O(M·D) memory"
    self_check = True
    auto_priority = {"cuda": 50}  # after cuda (bench/RESULTS.md); CPU tensors only when asked for

    def unavailable_reason(self):
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install triton)"
        return None

    def devices(self):
        out = ["cuda"] if torch.cuda.is_available() else []
        return out + (["cpu"] if os.environ.get("TRITON_INTERPRET", "0") == "1" else [])

    def not_supported_reasons(self, z, mu, logvar):
        why = []
        if z.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            why.append("backend 'triton' runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, "
                       "the interpreter used for testing)")
        elif z.device.type not in ("cpu", "cuda"):
            why.append(f"backend 'triton' runs on CUDA tensors, got {z.device.type}")
        if mu.shape[0] * mu.shape[1] >= 2**31:
            why.append("backend 'triton' indexes components with 32-bit offsets: K·D must be < 2^31")
        return why

    def log_qz(self, z, mu, logvar, weights, deterministic=False, family="normal", grad_components=None):
        from .triton_kernels import log_qz_op

        q, qd, _, _ = log_qz_op(z, mu, logvar, *weights.op_args(), bool(deterministic), needs_grad(z, mu, logvar),
                                family, op_grad_components(grad_components))
        return q, qd
