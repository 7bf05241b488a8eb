"""The ``torch`` backend: the pure-PyTorch reference of tcvae_kernels/reference.py, chunked, on any
device, differentiated by autograd; :class:`ReferenceBackend`, the same evaluation with a choice of
exponent base, is the truth :func:`tcvae_kernels.testing.check_backend` measures every backend against."""

from __future__ import annotations

from ..reference import log_qz_reference
from .base import Backend, register_backend


class ReferenceBackend(Backend):
    """The reference as a Backend (its grouped evaluation the default one: each group's joint on its
    dimension slice). ``base2=True``: the exponents in base 2, the second float32 evaluation of the
    tolerance rule (tcvae_kernels/testing.py). Not registered: ``torch`` is this in base e."""

    name = "reference"
    description = "the float64 reference of reference.py (base e or base 2)"

    def __init__(self, base2: bool = False):
        self.base2 = base2

    def log_qz(self, z, mu, logvar, weights, deterministic=False, family="normal", grad_components=None):
        return log_qz_reference(z, mu, logvar, weights, base2=self.base2, family=family,
                                grad_components=grad_components)


@register_backend
class TorchBackend(ReferenceBackend):
    name = "torch"
    description = "pure-PyTorch reference (chunked, any device, exact autograd)"
    auto_priority = {"cpu": 0, "cuda": 0}  # the fallback (and the only choice on other devices)
