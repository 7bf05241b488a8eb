"""The backends, one module each beside its kernel; importing this package registers them all
(base.py: the contract and the registry; the dispatch point is tcvae_kernels/dispatch.py).

    torch_ref.py       ``torch``: the pure-PyTorch reference (any device)
    extension.py       the C++/CUDA extension's ops (csrc/): loading, fake kernels, autograd
    cpu.py             ``cpu``: the fused C++ kernel
    cuda.py            ``cuda``: the fused CUDA kernels
    triton_adapter.py  ``triton``: the adapter of triton_kernels.py (imported on first use)
"""

from . import torch_ref, cpu, cuda, triton_adapter  # noqa: F401  (registration order: backend_names())
