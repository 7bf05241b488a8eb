"""The six disentanglement metrics at disentanglement_lib's default sizes: ours against the real
disentanglement_lib 1.5, side by side in one run, on the same data and the same random stream
(RandomState(0), as the library's evaluation with random_seed = 0).

    python bench/bench_metrics.py [--out bench/out/metrics] [--repeats 1]

Data: the dSprites factor grid (3 × 6 × 40 × 32 × 32) with observations = the factors scaled to
[0, 1] (tcvae_kernels.data.FactorCodes) and a fixed 10-d encoder (a linear mix bent by tanh), so the
time is the metric's own, not an image encoder's. Prints a markdown table (seconds per call, the
value from each side, their difference) and writes it with a JSON copy to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from dlib_side import (DlibData, beta_vae, bind_gin, dci, factor_vae, mig,  # noqa: E402
                       modularity_explicitness, sap_score)

from tcvae_kernels import data as tkdata  # noqa: E402
from tcvae_kernels import metrics  # noqa: E402

SIZES = (3, 6, 40, 32, 32)
DATA = tkdata.FactorCodes(SIZES)
_r = np.random.default_rng(0)
MIX, SHIFT = _r.normal(size=(5, 10)), _r.normal(size=10)


def represent(x):
    return np.tanh(x @ MIX + SHIFT)


# name -> (ours, the library's, its headline key on each side); the library's defaults
CASES = {
    "beta_vae": (lambda rs: metrics.beta_vae_score(represent, DATA, rs)["eval_accuracy"],
                 lambda rs: beta_vae.compute_beta_vae_sklearn(DlibData(DATA), represent, rs, None, batch_size=64,
                                                              num_train=10000, num_eval=5000)["eval_accuracy"]),
    "factor_vae": (lambda rs: metrics.factor_vae_score(represent, DATA, rs)["eval_accuracy"],
                   lambda rs: factor_vae.compute_factor_vae(DlibData(DATA), represent, rs, None, batch_size=64,
                                                            num_train=10000, num_eval=5000,
                                                            num_variance_estimate=10000)["eval_accuracy"]),
    "mig": (lambda rs: metrics.mig_histogram_score(represent, DATA, rs)["mig"],
            lambda rs: mig.compute_mig(DlibData(DATA), represent, rs, None, num_train=10000)["discrete_mig"]),
    "dci": (lambda rs: metrics.dci_score(represent, DATA, rs)["disentanglement"],
            lambda rs: dci.compute_dci(DlibData(DATA), represent, rs, None, num_train=10000,
                                       num_test=5000)["disentanglement"]),
    "sap": (lambda rs: metrics.sap_score(represent, DATA, rs)["sap"],
            lambda rs: sap_score.compute_sap(DlibData(DATA), represent, rs, None, num_train=10000, num_test=5000,
                                             continuous_factors=False)["SAP_score"]),
    "modularity": (lambda rs: metrics.modularity_explicitness_score(represent, DATA, rs)["modularity"],
                   lambda rs: modularity_explicitness.compute_modularity_explicitness(
                       DlibData(DATA), represent, rs, None, num_train=10000, num_test=5000)["modularity_score"]),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/out/metrics")
    p.add_argument("--metrics", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args(argv)
    bind_gin()
    rows = []
    for name in a.metrics:
        ours_fn, lib_fn = CASES[name]
        t = {"ours": [], "lib": []}
        vals = {}
        for _ in range(a.repeats):  # alternate the sides, each from RandomState(0) and numpy's global seed 0
            for side, fn in (("ours", ours_fn), ("lib", lib_fn)):
                np.random.seed(0)
                t0 = time.perf_counter()
                vals[side] = float(fn(np.random.RandomState(0)))
                t[side].append(time.perf_counter() - t0)
        row = {"metric": name, "ours_s": float(np.median(t["ours"])), "lib_s": float(np.median(t["lib"])),
               "ours": vals["ours"], "lib": vals["lib"], "diff": abs(vals["ours"] - vals["lib"])}
        rows.append(row)
        print(f"{name}: ours {row['ours_s']:.2f} s, library {row['lib_s']:.2f} s, values {row['ours']:.6f} / "
              f"{row['lib']:.6f}", flush=True)
    lines = ["| metric | ours (s) | disentanglement_lib (s) | ratio | ours | library | abs. difference |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['metric']} | {r['ours_s']:.2f} | {r['lib_s']:.2f} | {r['lib_s'] / r['ours_s']:.2f}x | "
                     f"{r['ours']:.6f} | {r['lib']:.6f} | {r['diff']:.1e} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "metrics.md"), "w") as fh:
        fh.write(table + "\n")
    with open(os.path.join(a.out, "metrics.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
