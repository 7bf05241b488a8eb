"""How large a share of the forward's marginal exp2s should go to the FMA pipe (exp2_fma)?

Compiles the CUDA forward (csrc/tcvae_fused.h, float, without gradient terms) for sm_90 with nvcc
for several shares (-DTCVAE_POLY_EVERY=N: one exp2 in N of the 32 per tile row), reads the machine
code with the same analysis as ``bench/gpu_report.py`` and prints the model's time
per element and its ratio to the MUFU floor at M = K = 16384. A prediction of the throughput
model, not a measurement: each polynomial exp2 moves one MUFU op off the special-function unit
(16/clk/SM) at the price of ~12 issue slots (4 warp instructions/clk/SM).

    python bench/poly_share.py [--arch 90] [--out bench/out/poly_share.md]
"""

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import gpu_report as gr  # noqa: E402  (bench/, beside this file)

KERNEL = r"""
#include "tcvae_fused.h"
using namespace tcvae::fused;
__global__ void __launch_bounds__(128) forward_kernel(const FwdArgs<float> a, int64_t k_per_split) {
  const int64_t r0 = int64_t(blockIdx.x) * kRows<float> * 128, split = blockIdx.y;
  const int64_t lo = split * k_per_split, hi = min(a.kp, lo + k_per_split);
  forward_thread<float, false>(a, r0, 128, int(threadIdx.x), split, lo, hi);
}
"""


def nvcc() -> str:
    for p in (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"), "nvcc"):
        if os.path.exists(p) or p == "nvcc":
            return p
    raise FileNotFoundError("nvcc")


def report(every: int, arch: int):
    with tempfile.TemporaryDirectory() as tmp:
        src, cub = os.path.join(tmp, "k.cu"), os.path.join(tmp, "k.cubin")
        open(src, "w").write(KERNEL)
        subprocess.run([nvcc(), "-cubin", f"-arch=sm_{arch}", "-O3", "--use_fast_math", "-std=c++17",
                        "--expt-relaxed-constexpr", f"-DTCVAE_POLY_EVERY={every}",
                        "-I", os.path.join(os.path.dirname(HERE), "csrc"), src, "-o", cub], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return gr.cubin_report("cuda", "forward_kernel", arch, f"every {every}", open(cub, "rb").read(), 64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    lines = ["| exp2s on the FMA pipe | regs | stack | MUFU/el | instr/el (D=32) | "
             + " | ".join(f"D={d}: clk/warp-el (bound), × floor" for d in gr.SIZES) + " |",
             "|---|---|---|---|---|" + "---|" * len(gr.SIZES)]
    for every, share in ((1000, "none"), (32, "1/32"), (16, "1/16"), (8, "1/8"), (5, "6/32"), (4, "1/4")):
        r = report(every, args.arch)
        cells = []
        for d in gr.SIZES:
            clk, pipe = gr.clocks_per_warp_element(r.per_element(d))
            cells.append(f"{clk:.2f} ({pipe}), {clk / gr.floor_clocks(d):.2f}")
        per = r.per_element(32)
        lines.append(f"| {share} | {r.regs} | {r.stack} | {per.get('MUFU.EX2', 0):.3f} | {sum(per.values()):.2f} | "
                     + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        open(args.out, "w").write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
