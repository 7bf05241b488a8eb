"""The ``cuda`` backend: the fused CUDA kernels of csrc/tcvae_cuda.cu (``torch.ops.tcvae.*`` on CUDA
tensors). Their code run on the CPU (csrc/tcvae_emulate.cpp) is a test backend: tests/cuda_emulation.py."""

from __future__ import annotations

from .base import register_backend
from .extension import LOAD_ERROR, ExtensionBackend, build_info, cuda_build_reason


@register_backend
class CudaBackend(ExtensionBackend):
    device_type = "cuda"  # also its name; "auto"'s first choice on CUDA tensors
    description = "fused CUDA C++ kernels (csrc/tcvae_cuda.cu), O(M·D) memory, deterministic"
    self_check = True

    def unavailable_reason(self):
        if LOAD_ERROR:
            return LOAD_ERROR
        if build_info().get("cuda") != "1":
            return (f"the extension was built without its CUDA kernel ({cuda_build_reason()}); reinstall "
                    "with CUDA_HOME pointing at a CUDA toolkit (or FORCE_CUDA=1)")
        return None
