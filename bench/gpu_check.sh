#!/usr/bin/env bash
# Everything that needs a GPU, from the repository root of the lent GPU machine:
#
#   bench/gpu_check.sh [--dry-run] [STAGE ...]        (results in $GPU_CHECK_OUT, else $OUT, else bench/out/gpu)
#
# With no STAGE: the first call's stages, what matters most, in this order, within one call of at most
# 8 minutes on an H100 (GPU_CHECK_BUDGET seconds, default 480; a stage gets what is left, capped at
# its own budget below, and a stage that runs out is stopped and reported, the next still runs):
#   build    pip install -e . compiled for this GPU's architecture only (16 jobs)              ~2 min, 240 s
#   verify   every GPU backend against the float64 reference, forward and the three gradients,
#            both families (`check --devices cuda`); backend="auto"'s one-time self-check      ~1 min, 120 s
#   kernels  each kernel timed at M = K = 16384, D = 10 and 32, beside the throughput model's
#            prediction (bench/gpu_kernels.py)                                                 ~2 min, 150 s
#   step     the demo's training step: eager, fullgraph, reduce-overhead (CUDA graphs)
#            (bench/compiled_step.py, 60 steps, with and without a bank of 4096)              ~2 min, 150 s
# Second-call stages, named explicitly (each fits one 10-minute call):
#   test       the whole suite on CUDA (Triton compiled, not interpreted), 8 workers
#   sanitize   compute-sanitizer memcheck / racecheck / initcheck on small cases of the GPU backends
#   kernels64  the kernel timings at D = 64 too
#   bench      eager, torch.compile, KeOps (if installed), triton, cuda at M in {1024, 4096, 16384},
#              D in {10, 32, 64}, then the fused kernels at M up to 65536
# Each stage appends its line to summary.md (name, status, seconds) and writes its result files as
# soon as it has them, so a call that times out still returns everything finished before it; every
# stage's output also goes to log.txt. At most 8 files come back from a call: the first call writes
# summary.md, log.txt, verify.txt, kernels.md, kernels.json, step.md, step.json.
# --dry-run: the control flow on a machine without a GPU (tests/kernels/test_gpu_check.py runs it): every
# stage runs its commands against the CPU at small sizes where they can run there (verify: check on
# cpu; step: eager and fullgraph (what reduce-overhead compiles) on cpu, 3 steps with a bank), or says why it skips them (build: the test
# session's build is used; kernels, sanitize: need a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
stages=()
for a in "$@"; do
  case "$a" in
    --dry-run) dry=1 ;;
    build|verify|kernels|step|test|sanitize|kernels64|bench) stages+=("$a") ;;
    *) echo "gpu_check.sh: unknown stage or option '$a' (stages: build verify kernels step test sanitize kernels64 bench; --dry-run)" >&2
       exit 2 ;;
  esac
done
[ ${#stages[@]} -gt 0 ] || stages=(build verify kernels step)
out="${GPU_CHECK_OUT:-${OUT:-bench/out/gpu}}"
mkdir -p "$out"
first_call=1
for s in "${stages[@]}"; do case "$s" in build|verify|kernels|step) ;; *) first_call=0 ;; esac; done
budget=${GPU_CHECK_BUDGET:-$([ "$first_call" -eq 1 ] && echo 480 || echo 570)}
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
SECONDS=0
log="$out/log.txt"
summary="$out/summary.md"
[ -f "$summary" ] || printf '| stage | result | seconds |\n|---|---|---|\n' > "$summary"

# run_stage NAME CAP COMMAND...: the command under `timeout`, at most CAP seconds and what is left of
# the budget; its output appended to log.txt (and shown); its line appended to summary.md.
run_stage() {
  local name=$1 cap=$2
  shift 2
  local left=$((budget - SECONDS))
  if [ "$left" -lt 20 ]; then
    echo "| $name | not run: the budget of ${budget} s is spent | 0 |" >> "$summary"
    status=1
    return
  fi
  [ "$cap" -le "$left" ] || cap=$left
  echo "== $name (at most ${cap} s)" | tee -a "$log"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$cap" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  local took=$((SECONDS - t0)) result=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then result="stopped at ${cap} s"; status=1
  elif [ "$rc" -ne 0 ]; then result="FAILED (exit $rc)"; status=1; fi
  echo "| $name | $result | $took |" >> "$summary"
}

skip_stage() {
  echo "== $1: skipped ($2)" | tee -a "$log"
  echo "| $1 | skipped: $2 | 0 |" >> "$summary"
}

gpu=cuda
[ "$dry" -eq 0 ] || gpu=cpu

for stage in "${stages[@]}"; do
  case "$stage" in
  build)
    if [ "$dry" -eq 1 ]; then skip_stage build "dry run: the test session's build is used"; continue; fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$summary"
    arch=$($py -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}.{p[1]}')")
    run_stage build 240 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="$arch" $py -m pip install --no-build-isolation --no-deps -e .
    $py -c "import torch, triton, tcvae_kernels as tk; from tcvae_kernels.backends import extension as e
print(f'software: torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}; backends {tk.available_backends()}; build {e.build_info()}')" \
      2>&1 | tee -a "$summary"
    ;;
  verify)
    families="normal laplace"
    [ "$dry" -eq 0 ] || families="normal"
    backends="cuda triton"
    [ "$dry" -eq 0 ] || backends="cpu"
    run_stage verify 120 bash -c "set -o pipefail
      $py -m tcvae_kernels check --devices $gpu --backends $backends --dtypes float64 float32 --families $families \
        | tee '$out/verify.txt' && $py bench/gpu_cases.py auto $gpu | tee -a '$out/verify.txt'"
    ;;
  kernels|kernels64)
    if [ "$dry" -eq 1 ]; then
      run_stage "$stage" 60 $py bench/gpu_kernels.py --dry-run --out "$out/kernels.md"
      continue
    fi
    dims="10 32"
    [ "$stage" = kernels ] || dims="64"
    run_stage "$stage" 150 $py bench/gpu_kernels.py --dims $dims --out "$out/$stage.md"
    ;;
  step)
    if [ "$dry" -eq 1 ]; then
      run_stage step 120 $py bench/compiled_step.py --device cpu --steps 3 --warmup 1 --batch 64 --banks 128 \
        --modes eager fullgraph --out "$out/step.md"
    else
      run_stage step 150 $py bench/compiled_step.py --device cuda --steps 60 --warmup 10 --banks 0 4096 \
        --modes eager fullgraph reduce-overhead --out "$out/step.md"
    fi
    ;;
  test)
    if [ "$dry" -eq 1 ]; then skip_stage test "dry run: the suite is what runs this script"; continue; fi
    run_stage test 540 bash -c "set -o pipefail; $py -m pytest -q tests -p no:cacheprovider -n 8 -m 'slow or not slow' 2>&1 | tee '$out/pytest.log' | tail -25"
    ;;
  sanitize)
    if [ "$dry" -eq 1 ]; then skip_stage sanitize "dry run: compute-sanitizer needs a GPU"; continue; fi
    cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    for be in cuda triton; do
      for tool in memcheck racecheck initcheck; do
        run_stage "sanitize-$tool-$be" 120 bash -c "'$cs' --tool $tool --error-exitcode 1 $py bench/gpu_cases.py sanitize $be >> '$out/sanitizer.log' 2>&1; rc=\$?; tail -3 '$out/sanitizer.log'; exit \$rc"
      done
    done
    ;;
  bench)
    if [ "$dry" -eq 1 ]; then skip_stage bench "dry run: the GPU benchmark needs a GPU"; continue; fi
    run_stage bench-full 420 $py -m tcvae_kernels bench --full --device cuda --min-time 0.5 --out "$out/full" \
      --title "GPU: all methods side by side"
    fused=$($py -c "import tcvae_kernels as tk; print(' '.join(b for b in ('cuda', 'triton') if b in tk.available_backends()))")
    run_stage bench-large 180 $py -m tcvae_kernels bench --device cuda --methods $fused --sizes 16384 32768 65536 --dims 64 \
      --min-time 0.5 --out "$out/large" --title "GPU: fused kernels at large M"
    ;;
  esac
done
echo "gpu_check.sh: ${SECONDS} s; summary:"
cat "$summary"
exit $status
