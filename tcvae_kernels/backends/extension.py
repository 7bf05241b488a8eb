"""Python side of the C++/CUDA custom ops ``torch.ops.tcvae.*`` (built from csrc/).

``tcvae::log_qz(z, mu, logvar, weights, offset, grad_terms, family, grad_components)
-> (log_qz [M], log_qz_dims [M, D], aux_q [M, 2], aux_qd [M, D, A])`` in the accumulation dtype
(float64 for float64 inputs, else float32); the aux tensors are the kernel's saved logsumexp states
(base 2, split as max + rest so the backward's softmax weights stay exact at any magnitude) and the
forward's sums of grad_z's terms (A = 5 on the CPU, 4 on CUDA). ``grad_components``: the backward
computes d/dmu, d/dlogvar for the first so many components only (-1: all; the others' rows are 0,
and they enter d/dz alone: a component bank's detached rows).
``tcvae::log_qz_backward(grad_q, grad_qd, z, mu, logvar, aux_q, aux_qd, ...) -> (grad_z, grad_mu,
grad_logvar)`` in the inputs' dtypes. ``weights, offset``: the estimator's log weights as
:meth:`tcvae_kernels.LogWeights.op_args` lays them out (every op here takes them so); ``family``: "normal" or "laplace" (``logvar`` then holds the log-scale).
``tcvae::log_qz_groups(z, mu, logvar, group_ends, ...)`` (CPU) adds ``log_qz_groups [M, G]`` for
groups of contiguous dimensions ``[group_ends[g-1], group_ends[g])``, in the same single pass, with
``tcvae::log_qz_groups_backward`` taking its upstream gradient too.
Here: loading the library, fake (meta) kernels for torch.compile, autograd wiring whose backward
is itself the custom op, so it dispatches per device like the forward, and the adapter both
extension backends share (``cpu.py``, ``cuda.py``). Math: tcvae_kernels/reference.py.
"""

from __future__ import annotations

import torch

from .._autograd import make_backward, no_double_backward, setup_context, setup_nothing
from .._validation import accumulation_dtype
from .base import Backend, needs_grad, op_grad_components

try:
    from .. import _C  # noqa: F401  (loading the library registers the ops)

    LOAD_ERROR: str | None = None
except ImportError as e:  # pure-Python install, or a build without the extension
    LOAD_ERROR = f"the C++ extension tcvae_kernels._C is not built ({e}); reinstall with `pip install --no-build-isolation -e .`"


def build_info() -> dict:
    """What the extension was compiled with, e.g. {"cpu_capability": "avx512", "cuda": "1"}."""
    if LOAD_ERROR:
        return {}
    return dict(item.split("=", 1) for item in torch.ops.tcvae.build_info().split(";"))


def cuda_build_reason() -> str:
    """Why the build left out the CUDA kernel, as setup.py recorded it."""
    try:
        from .. import _build_config

        return _build_config.CUDA_REASON or "unknown"
    except ImportError:
        return "unknown: no record of the build (tcvae_kernels/_build_config.py)"


if LOAD_ERROR is None:

    @torch.library.register_fake("tcvae::log_qz")
    def _log_qz_fake(z, mu, logvar, weights, offset, grad_terms=True, family="normal", grad_components=-1):
        torch._check(z.dim() == 2 and mu.dim() == 2 and mu.shape == logvar.shape)
        torch._check(z.shape[1] == mu.shape[1])
        acc = accumulation_dtype(z.dtype)
        m, d = z.shape
        # aux_qd: (m, r, tn, jn, jg) on the CPU (the grad_z sums over the columns its backward leaves
        # out); (m, r, tn, jn) on CUDA (over all: its backward computes no grad_z)
        states = 4 if z.device.type == "cuda" else 5
        return (z.new_empty((m,), dtype=acc), z.new_empty((m, d), dtype=acc),
                z.new_empty((m, 2), dtype=acc), z.new_empty((m, d, states), dtype=acc))

    @torch.library.register_fake("tcvae::log_qz_backward")
    def _log_qz_backward_fake(grad_q, grad_qd, z, mu, logvar, aux_q, aux_qd, weights, offset, grad_terms=True,
                              family="normal", grad_components=-1):
        return torch.empty_like(z), torch.empty_like(mu), torch.empty_like(logvar)

    @torch.library.register_fake("tcvae::log_qz_groups")
    def _log_qz_groups_fake(z, mu, logvar, group_ends, weights, offset, family="normal", grad_terms=True,
                            grad_components=-1):
        q, qd, aq, _ = _log_qz_fake(z, mu, logvar, weights, offset)
        aqd = z.new_empty((*qd.shape, 5), dtype=q.dtype)  # a CPU-only op: (m, r, tn, jn, jg)
        g = len(group_ends)
        return q, qd, z.new_empty((z.shape[0], g), dtype=q.dtype), aq, aqd, z.new_empty((z.shape[0], g, 2), dtype=q.dtype)

    @torch.library.register_fake("tcvae::log_qz_groups_backward")
    def _log_qz_groups_backward_fake(grad_q, grad_qd, grad_qg, z, mu, logvar, aux_q, aux_qd, aux_qg, group_ends,
                                     weights, offset, family="normal", grad_terms=True, grad_components=-1):
        return torch.empty_like(z), torch.empty_like(mu), torch.empty_like(logvar)

    # Under torch.autocast the ops compute in float32: float16/bfloat16 inputs are upcast and the
    # outputs stay float32 (autocast's rule for softmax-like reductions).
    for _name in ("log_qz", "log_qz_groups"):
        for _dev in ("cpu", "cuda"):
            torch.library.register_autocast(f"tcvae::{_name}", _dev, torch.float32)

    for _name in ("log_qz", "log_qz_groups"):
        torch.library.register_autograd(
            f"tcvae::{_name}", make_backward(getattr(torch.ops.tcvae, f"{_name}_backward")), setup_context=setup_context
        )
        torch.library.register_autograd(f"tcvae::{_name}_backward", no_double_backward, setup_context=setup_nothing)


class ExtensionBackend(Backend):
    """A backend served by the compiled op on one device type (the dispatcher picks the kernel).
    A subclass names its ``device_type``; its ``name`` defaults to it, and ``"auto"`` prefers it on
    that device type above every other backend (priority 100)."""

    device_type = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.device_type:
            cls.name = cls.__dict__.get("name", cls.device_type)
            cls.auto_priority = cls.__dict__.get("auto_priority", {cls.device_type: 100})

    def unavailable_reason(self):
        return LOAD_ERROR

    def not_supported_reasons(self, z, mu, logvar):
        if z.device.type != self.device_type:
            return [f"backend {self.name!r} runs on {self.device_type} tensors, got {z.device.type}"]
        return []

    def devices(self):
        if self.device_type == "cuda" and not torch.cuda.is_available():
            return []
        return [self.device_type]

    def log_qz(self, z, mu, logvar, weights, deterministic=False, family="normal", grad_components=None):
        # both kernels are always deterministic (fixed-order reductions, no atomics)
        q, qd, _, _ = torch.ops.tcvae.log_qz(z, mu, logvar, *weights.op_args(), needs_grad(z, mu, logvar), family,
                                             op_grad_components(grad_components))
        return q, qd
