"""The user commands, not needed to compute a loss: ``python -m tcvae_kernels check`` (check.py: every
backend against the reference) and ``bench`` (benchmark.py, with exp2_peak.py: the GPU's measured
exp2 throughput). Contributor tooling (the compiled GPU code's analysis, the other benchmarks) lives
in bench/."""

import re


def plain_text(doc: str | None) -> str:
    """A module docstring as command-line help: reStructuredText's roles and literals unwrapped
    (``:func:`~x.y``` -> y, ````x```` -> x)."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([^`]+)`", r"\1", doc or "")
    return re.sub(r"``([^`]+)``", r"\1", text)
