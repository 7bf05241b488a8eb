"""``import tcvae_kernels`` against ``import torch`` alone: wall time of fresh interpreters, rounds
alternating between the two, medians; and which heavy modules each leaves loaded.

    python bench/import_time.py [--rounds 9]

The target (bench/RESULTS.md, "Import time"): within 15 % of ``import torch``, and neither
``torch._dynamo`` nor ``triton`` loaded (tests/estimates/test_compile.py checks the second).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("torch._dynamo", "torch._inductor", "triton", "sympy")
CODE = {"torch": "import torch", "tcvae_kernels": "import tcvae_kernels"}


def once(stmt: str) -> tuple[float, list[str]]:
    code = f"import sys; {stmt}; import json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    return time.perf_counter() - t0, json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    once(CODE["tcvae_kernels"])  # warm the file cache
    times = {k: [] for k in CODE}
    loaded = {}
    for _ in range(args.rounds):
        for k, stmt in CODE.items():
            t, mods = once(stmt)
            times[k].append(t)
            loaded[k] = mods
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"fresh interpreters, {args.rounds} rounds alternating, medians\n")
    print("| import | median s | × import torch | heavy modules loaded |\n|---|---|---|---|")
    for k in CODE:
        print(f"| {k} | {med[k]:.2f} | {med[k] / med['torch']:.2f} | {', '.join(loaded[k]) or 'none'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
