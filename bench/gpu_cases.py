"""Small GPU cases for bench/gpu_check.sh (also runs on the CPU for its --dry-run).

    python bench/gpu_cases.py auto DEVICE        backend="auto"'s pick and its one-time self-checks
    python bench/gpu_cases.py sanitize BACKEND   small cases of a GPU backend, forward and backward
                                                 (run under compute-sanitizer: odd sizes, K != M, splits)
"""

from __future__ import annotations

import sys

import torch


def auto(device: str) -> int:
    from tcvae_kernels import dispatch

    dev = torch.device(device)
    for dtype in (torch.float32, torch.float64):
        z = torch.randn(64, 5, device=dev, dtype=dtype)
        be = dispatch.select_backend("auto", z, z, z)
        checks = dispatch._SELF_CHECKS or "none (no self-checked backend here)"
        print(f"auto on {dev} {dtype}: {be.name}; one-time checks: {checks}")
    failed = [k for k, why in dispatch._SELF_CHECKS.items() if why]
    return 1 if failed else 0


def sanitize(backend: str, device: str = "cuda") -> int:
    import tcvae_kernels as tk

    for m, k, d, est in [(37, 37, 5, "mss"), (5, 70, 3, "mss"), (70, 5, 1, "uniform"), (129, 129, 33, "mws")]:
        z, mu, lv = (torch.randn(n, d, device=device, requires_grad=True) for n in (m, k, k))
        for det in (False, True):
            q, qd = tk.log_qz(z, mu, lv, dataset_size=10 * max(m, k), estimator=est, backend=backend,
                              deterministic=det)
            (q.sum() - qd.sum()).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    print("ok", backend)
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("auto", "sanitize"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(auto(sys.argv[2]) if sys.argv[1] == "auto" else sanitize(*sys.argv[2:]))
