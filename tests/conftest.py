"""Test-session set-up. Without a CUDA device the Triton kernels are tested through Triton's
interpreter on CPU tensors; TRITON_INTERPRET must be set before triton is first imported.

Two tiers (markers in pyproject.toml): the default one (``make test``, plain ``pytest``) covers
every code path at small sizes; ``slow`` holds heavy repetitions of the same paths (``make
test-slow``; CI runs both)."""

import json
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _inductor_cache_dir() -> str:
    """A compile cache of this build only: ``build/inductor-cache/<hash of the built extension and the
    package's Python sources>``. Torch's AOTAutograd cache keys a graph by the Dynamo graph, which
    names a custom op but holds neither its schema nor its registered autograd formula: after a rebuild
    that changed either, the shared default cache (/tmp/torchinductor_$USER) handed back a backward
    calling the old schema (CI failed on it, 12-07). Older builds' folders are removed."""
    import hashlib
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted((root / "tcvae_kernels").rglob("*")):
        if path.suffix in (".py", ".so") and path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    base = root / "build" / "inductor-cache"
    here = base / digest.hexdigest()[:16]
    if not os.environ.get("PYTEST_XDIST_WORKER") and base.is_dir():
        for old in base.iterdir():
            if old != here:
                shutil.rmtree(old, ignore_errors=True)
    return str(here)


# Set before anything compiles; subprocesses (the CLI, the demo) inherit it. A user's own setting wins.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _inductor_cache_dir())
# Under pytest-xdist (one worker per core): one intra-op thread per worker and its subprocesses, not
# one per core each (oversubscribed, the default tier took 14 % longer). Tests of thread counts set
# theirs explicitly (test_cpu_kernel's thread-count invariance asserts the count it ran with).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
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


@pytest.fixture(scope="session")
def run_once(tmp_path_factory):
    """``run_once(key, compute)``: ``compute()``'s JSON result, computed once per test run and shared
    by every pytest-xdist worker (the first to ask computes it under a file lock; the others wait and
    read the file). For the expensive facts several tests assert: the GPU code's compiled reports,
    mypy's output. (pytest-xdist's ``xdist_group`` does not group under pytest 9: the marker sets a
    node id attribute pytest no longer reads, so a per-worker cache ran such work once per worker.)"""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp is a folder of the run's shared one
        root = root.parent

    def get(key: str, compute):
        path = root / f"run-once-{key}.json"
        with FileLock(str(path) + ".lock"):
            if not path.is_file():
                path.write_text(json.dumps(compute()))
            return json.loads(path.read_text())

    return get


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


def _is_interpreted_triton(value) -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1" and (value == "triton" or getattr(value, "name", None) == "triton")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under the Triton interpreter, a test's float64 and bfloat16 variants go to the slow tier:
    the interpreter runs the kernels' code through numpy, so another dtype repeats the float32
    variant's path at 2-3× its cost (20 s each); the other backends keep every dtype in the default
    tier, and Triton's float64 gradcheck stays there too (it has no dtype parameter)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(_is_interpreted_triton(v) for v in params.values()) and any(
                v is torch.float64 or v is torch.bfloat16 for v in params.values()):
            item.add_marker(pytest.mark.slow)
