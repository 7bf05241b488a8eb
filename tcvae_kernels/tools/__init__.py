"""Tooling, not needed to compute a loss: ``python -m tcvae_kernels check`` (check.py: every backend
against the reference), ``bench`` (benchmark.py), ``gpu-report`` (gpu_report.py: the compiled GPU
code read without a GPU; _planted.py: deliberately bad kernels its tests catch)."""
