"""Deliberately bad Triton kernels for ``bench/gpu_report.py --planted``: the tests compile them to
show that the compiled-code checks can fail (tests/kernels/test_gpu_code.py)."""

import triton
import triton.language as tl


@triton.jit
def _planted_spill(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """A [BLOCK, BLOCK] tile kept live across a loop in one warp: far beyond 255 registers."""
    offs = tl.arange(0, BLOCK)
    t = tl.load(x_ptr + offs[:, None] * BLOCK + offs[None, :])
    acc = tl.zeros([BLOCK, BLOCK], tl.float32)
    for i in range(n):
        acc += tl.exp2(t * i)
    tl.store(out_ptr + offs[:, None] * BLOCK + offs[None, :], acc)


@triton.jit
def _planted_barrier(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """A reduction across warps inside the loop: shared memory and a barrier per iteration."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(n):
        x = tl.load(x_ptr + i * BLOCK + offs)
        acc += tl.sum(tl.exp2(x), axis=0)
    tl.store(out_ptr + offs, acc)


#: name -> (kernel, constexprs, num_warps)
PLANTED = {"_planted_spill": (_planted_spill, {"BLOCK": 64}, 1), "_planted_barrier": (_planted_barrier, {"BLOCK": 512}, 4)}
