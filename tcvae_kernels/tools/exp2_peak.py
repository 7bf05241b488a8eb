"""The GPU's exp2 throughput (the MUFU peak), measured by a Triton kernel on register-resident
values: the floor the benchmarks and ``bench/gpu_report.py`` compare the kernels' exponentials with
(``torch.exp`` is memory-bound on a GPU)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _exp2_peak_kernel(out_ptr, n_iter, BLOCK: tl.constexpr):
    """BLOCK independent exp2 chains per program, n_iter exps each, values kept in registers."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.arange(0, BLOCK).to(tl.float32) * -1e-3
    acc = tl.zeros([BLOCK], tl.float32)
    for _ in range(n_iter):
        acc += tl.exp2(x)  # one MUFU op and two adds per element and iteration
        x = x - 1e-6
    tl.store(out_ptr + offs, acc)


def exp2_peak(device: torch.device, n_iter: int = 4096, block: int = 1024) -> float:
    """Measured exp2 throughput (exps/s) of the GPU: the MUFU peak the kernels are compared with."""
    programs = 8 * torch.cuda.get_device_properties(device).multi_processor_count
    out = torch.empty(programs * block, device=device)
    run = lambda: _exp2_peak_kernel[(programs,)](out, n_iter, BLOCK=block, num_warps=8)  # noqa: E731
    run()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        start.record()
        run()
        end.record()
        torch.cuda.synchronize(device)
        best = min(best, start.elapsed_time(end) / 1e3)
    return programs * block * n_iter / best
