"""The CUDA kernels' per-thread code and host orchestration run serially on CPU tensors
(``torch.ops.tcvae._emulate_log_qz``, csrc/tcvae_emulate.cpp) as a Backend, for the tests only: not
registered, not part of the package. ``splits`` forces the split-K count;
``helpers.backends(emulation=...)`` adds it to the backend cases."""

from __future__ import annotations

import torch

from tcvae_kernels.backends.base import Backend, op_grad_components
from tcvae_kernels.backends.extension import LOAD_ERROR


class _EmulatedCudaFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, mu, logvar, weights, splits, family, grad_components):
        q, qd, aq, aqd = torch.ops.tcvae._emulate_log_qz(z, mu, logvar, *weights.op_args(), splits,
                                                         any(ctx.needs_input_grad[:3]), family)
        ctx.save_for_backward(z, mu, logvar, aq, aqd)
        ctx.weights, ctx.splits, ctx.family, ctx.grad_components = weights, splits, family, grad_components
        return q, qd

    @staticmethod
    def backward(ctx, grad_q, grad_qd):
        z, mu, logvar, aq, aqd = ctx.saved_tensors
        gz, gmu, glv = torch.ops.tcvae._emulate_log_qz_backward(
            grad_q.contiguous(), grad_qd.contiguous(), z, mu, logvar, aq, aqd, *ctx.weights.op_args(), ctx.splits,
            True, ctx.family, ctx.grad_components)
        return gz, gmu, glv, None, None, None, None


class CudaEmulationBackend(Backend):
    """Test-only: the CUDA kernels' per-thread code and host orchestration run serially on CPU
    tensors (csrc/tcvae_emulate.cpp), ``splits`` forcing the split-K count. Not registered for users."""

    name = "cuda-emulation"
    description = "the CUDA kernels' code run serially on the CPU (tests only)"

    def __init__(self, splits: int = 1):
        self.splits = splits

    def unavailable_reason(self):
        return LOAD_ERROR

    def not_supported_reasons(self, z, mu, logvar):
        return [] if z.device.type == "cpu" else ["the emulation runs on CPU tensors"]

    def log_qz(self, z, mu, logvar, weights, deterministic=False, family="normal", grad_components=None):
        return _EmulatedCudaFn.apply(z, mu, logvar, weights, self.splits, family,
                                     op_grad_components(grad_components))
