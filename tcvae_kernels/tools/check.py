"""``python -m tcvae_kernels check``: cross-check every available backend against the float64
reference on fresh random inputs (forward and all gradients, the op with and without groups of
dimensions) and print a pass/fail table."""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch

from ..backends.base import backend_names
from ..dispatch import backend_reasons
from ..estimators import log_weights
from ..families import FAMILIES
from ..progress import progress
from . import plain_text
from ..testing import check_backend, random_inputs

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# (M, K, D, estimator, kind, groups): odd sizes, K != M, the input families of the test suite, and
# the grouped op (groups: index lists, or None for the plain op).
QUICK_CASES = [
    (1, 1, 3, "mws", "normal", None),
    (7, 7, 3, "mss", "normal", None),
    (129, 129, 10, "mss", "noncontiguous", None),
    (65, 33, 33, "uniform", "normal", None),
    (33, 33, 10, "mws", "extreme", None),
    (37, 37, 10, "mss", "normal", [[0, 7, 2], [1, 3], [4], [5, 6, 8, 9]]),
    (33, 33, 6, "mss", "extreme", [[0, 1, 2], [3, 4, 5]]),
]
ALL_CASES = QUICK_CASES + [
    (2, 2, 1, "mss", "normal", None),
    (1000, 1000, 10, "mss", "normal", None),
    (257, 257, 64, "mws", "noncontiguous", None),
    (129, 129, 3, "mss", "extreme", None),
    (17, 301, 5, "uniform", "extreme", None),
    (257, 257, 33, "mss", "noncontiguous", [list(range(0, 33, 3)), list(range(1, 33, 3)), list(range(2, 33, 3))]),
]


def run_checks(backends, devices, dtypes, cases, seed, out=None, families=("normal",)):
    out = out or sys.stdout
    rows, failures = [], 0
    g = torch.Generator().manual_seed(seed)
    for name in backends:
        for device in devices:
            for dtype_name, family in [(t, f) for t in dtypes for f in families]:
                dtype = DTYPES[dtype_name]
                passed, total, worst, skipped = 0, 0, None, None
                t0 = time.perf_counter()
                for m, k, d, est, kind, groups in progress(cases, desc=f"check {name} {device} {dtype_name} {family}",
                                                           unit="case", leave=False):
                    z, mu, logvar = random_inputs(m, k, d, kind=kind, dtype=dtype, device=device, generator=g,
                                                  family=family)
                    why = backend_reasons(name, z, mu, logvar)
                    if why:
                        skipped = why[0]
                        break
                    w = log_weights(est, k, 10 * max(m, k))
                    res = check_backend(name, z, mu, logvar, w, groups=groups, family=family)
                    if groups:
                        kind += f", {len(groups)} groups"
                    total += 1
                    passed += res.ok
                    wname, err, allowed = res.worst()
                    ratio = err / allowed if allowed > 0 else float("inf")
                    if worst is None or ratio > worst[0]:
                        worst = (ratio, f"{wname} error {err:.1e} (bound {allowed:.1e}; {m}x{k}x{d} {est} {kind})")
                if family != "normal":
                    dtype_name = f"{dtype_name} {family}"
                if skipped:
                    rows.append((name, device, dtype_name, "-", "skipped", skipped))
                    continue
                failures += passed != total
                status = "PASS" if passed == total else "FAIL"
                rows.append((name, device, dtype_name, f"{passed}/{total}", status,
                             f"worst: {worst[1]}  [{time.perf_counter() - t0:.1f}s]"))
    header = ("backend", "device", "dtype", "cases", "result", "detail")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)) + " | " + header[5], file=out)
    print("-+-".join("-" * w for w in widths) + "-+-" + "-" * 20, file=out)
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " | " + r[5], file=out)
    return failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tcvae_kernels check", description=plain_text(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true", help="every dtype and more sizes (slower)")
    p.add_argument("--backends", nargs="+", default=None, choices=backend_names(), help="default: all available")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    p.add_argument("--dtypes", nargs="+", default=None, choices=list(DTYPES))
    p.add_argument("--seed", type=int, default=None, help="default: fresh")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES,
                   help="posterior families (default: both)")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(2**31)
    devices = a.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    dtypes = a.dtypes or (list(DTYPES) if a.all else ["float64", "float32"])
    backends = a.backends or list(backend_names())
    print(f"tcvae_kernels check: seed={seed}, torch {torch.__version__}, threads={torch.get_num_threads()}")
    failures = run_checks(backends, devices, dtypes, ALL_CASES if a.all else QUICK_CASES, seed, families=a.families)
    print("all checks passed" if failures == 0 else f"{failures} backend/device/dtype combination(s) FAILED")
    return 1 if failures else 0
