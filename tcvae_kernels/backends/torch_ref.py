"""The ``torch`` backend: the pure-PyTorch reference of tcvae_kernels/reference.py, chunked, on any
device, differentiated by autograd."""

from __future__ import annotations

from .base import Backend, register_backend


@register_backend
class TorchBackend(Backend):
    name = "torch"
    description = "pure-PyTorch reference (chunked, any device, exact autograd)"
    auto_priority = {"cpu": 0, "cuda": 0}  # the fallback (and the only choice on other devices)

    def log_qz(self, z, mu, logvar, weights, deterministic=False, family="normal", grad_components=None):
        from ..reference import log_qz_reference

        return log_qz_reference(z, mu, logvar, weights, family=family, grad_components=grad_components)
