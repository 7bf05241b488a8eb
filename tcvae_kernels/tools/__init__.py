"""The user commands, not needed to compute a loss: ``python -m tcvae_kernels check`` (check.py: every
backend against the reference) and ``bench`` (benchmark.py, with exp2_peak.py: the GPU's measured
exp2 throughput). Contributor tooling (the compiled GPU code's analysis, the other benchmarks) lives
in bench/."""
