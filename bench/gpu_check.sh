#!/usr/bin/env bash
# Everything that needs a GPU, in one call (run on the lent GPU machine, from the repository root):
#   bench/gpu_check.sh [all|build|test|sanitize|kernels|bench] [OUT_DIR]
# Each stage is meant to fit one 10-minute call of the device tool (estimates for one H100/H200):
# build    : pip install --no-build-isolation --no-deps -e .  (compiles the CUDA kernel for this GPU; ~3 min)
# test     : the whole test suite on CUDA (Triton compiled, not interpreted) + `check --all` (~6 min)
# sanitize : compute-sanitizer memcheck / racecheck / initcheck on small cases of the GPU backends (~3 min)
# kernels  : every GPU kernel timed at M = K = 16384, D ∈ {10, 32, 64} beside the throughput model's
#            prediction (bench/gpu_kernels.py; ~3 min)
# bench    : eager, torch.compile, KeOps (if installed), triton, cuda at M ∈ {1024, 4096, 16384},
#            D ∈ {10, 32, 64}, forward and forward+backward, vs the measured exp2 (MUFU) peak;
#            then the memory check at M = 65536, D = 64 (~8 min)
# Results (logs, results.md/json/png) go to OUT_DIR (default: $OUT, else bench/out/gpu).
set -uo pipefail
stage="${1:-all}"
out="${2:-${OUT:-bench/out/gpu}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
run() { echo "+ $*"; "$@" || status=1; }

if [[ "$stage" == all || "$stage" == build ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
  $py -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
  run env MAX_JOBS=16 $py -m pip install --no-build-isolation --no-deps -e . 2>&1 | tail -3
  $py -c "import tcvae_kernels as tk; print('backends:', tk.available_backends(), tk._ops.build_info())" | tee -a "$out/gpu.txt"
fi

if [[ "$stage" == all || "$stage" == test ]]; then
  run $py -m pytest -q tests -x -p no:cacheprovider 2>&1 | tee "$out/pytest.log" | tail -25
  run $py -m tcvae_kernels check --all 2>&1 | tee "$out/check.log"
fi

if [[ "$stage" == all || "$stage" == sanitize ]]; then
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  cat > /tmp/tcvae_sanitize.py <<'PY'
import sys, torch, tcvae_kernels as tk
backend = sys.argv[1]
for m, k, d, est in [(37, 37, 5, "mss"), (5, 70, 3, "mss"), (70, 5, 1, "uniform"), (129, 129, 33, "mws")]:
    z, mu, lv = (torch.randn(n, d, device="cuda", requires_grad=True) for n in (m, k, k))
    for det in (False, True):
        q, qd = tk.log_qz(z, mu, lv, dataset_size=10 * max(m, k), estimator=est, backend=backend, deterministic=det)
        (q.sum() - qd.sum()).backward()
torch.cuda.synchronize()
print("ok", backend)
PY
  for be in cuda triton; do
    if $py -c "import tcvae_kernels as tk, sys; sys.exit(0 if '$be' in tk.available_backends() else 1)"; then
      for tool in memcheck racecheck initcheck; do
        echo "== $tool $be" | tee -a "$out/sanitizer.log"
        run "$cs" --tool "$tool" --error-exitcode 1 $py /tmp/tcvae_sanitize.py "$be" >> "$out/sanitizer.log" 2>&1
        tail -3 "$out/sanitizer.log"
      done
    fi
  done
fi

if [[ "$stage" == all || "$stage" == kernels ]]; then
  run $py bench/gpu_kernels.py --out "$out/kernels.md" 2>&1 | tee "$out/kernels.log"
fi

if [[ "$stage" == all || "$stage" == bench ]]; then
  run $py -m tcvae_kernels bench --full --device cuda --min-time 0.5 --out "$out/full" \
      --title "GPU: all methods side by side" 2>&1 | grep -v '^{' | tee "$out/bench.log"
  fused=$($py -c "import tcvae_kernels as tk; print(' '.join(b for b in ('cuda', 'triton') if b in tk.available_backends()))")
  run $py -m tcvae_kernels bench --device cuda --methods $fused --sizes 16384 32768 65536 --dims 64 \
      --min-time 0.5 --out "$out/large" --title "GPU: fused kernels at large M" 2>&1 | grep -v '^{' | tee -a "$out/bench.log"
fi
exit $status
