"""Test-session set-up. Without a CUDA device the Triton kernels are tested through Triton's
interpreter on CPU tensors; TRITON_INTERPRET must be set before triton is first imported.

Two tiers (markers in pyproject.toml): the default one (``make test``, plain ``pytest``) covers
every code path at small sizes; ``slow`` holds heavy repetitions of the same paths (``make
test-slow``; CI runs both)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("TRITON_INTERPRET") == "1":
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - the triton tests skip themselves
        pass
    else:
        from triton_interpreter import skip_repeated_patching

        skip_repeated_patching()

# Hypothesis profiles: "ci" (the default, ~200 examples per property) and "long" (thousands), chosen
# with pytest's --hypothesis-profile=long or HYPOTHESIS_PROFILE=long.
from hypothesis import HealthCheck, settings  # noqa: E402

_common = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=200, **_common)
settings.register_profile("long", max_examples=5000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    parser.addoption("--sanitized-build", default=None, metavar="SANITIZERS",
                     help="fail unless the loaded extension was built with TCVAE_SANITIZE=SANITIZERS (make sanitize)")


def pytest_configure(config):
    want = config.getoption("--sanitized-build")
    if want:
        import tcvae_kernels
        from tcvae_kernels.backends import extension

        got = extension.build_info().get("sanitize")
        if got != want:
            raise pytest.UsageError(f"--sanitized-build={want}: the extension loaded from "
                                    f"{tcvae_kernels.__file__} was built with sanitize={got} ({extension.LOAD_ERROR or 'loaded'})")
