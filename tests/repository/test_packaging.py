"""Installing the way users install. Default tier: the package installed in this environment
(``make build``'s editable install, which compiled the C++ and the CUDA code) imports in a fresh
process from outside the source tree, with its metadata, build record and fused ``cpu`` backend;
the CUDA toolkit detection on fake toolkits. Slow tier (each creates a venv, installs torch from
this machine's local disk and compiles the CPU kernel; the CUDA compile is make build's): a plain
``pip install`` of a clean copy of the tree into a fresh venv (build isolation: pip installs torch
for the build; no CUDA_HOME), and a wheel built with ``python -m build --wheel --no-isolation``
installed into another."""

import os
import shutil
import subprocess
import sys
import venv

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

SMOKE = r"""
import os, sys, torch, tcvae_kernels as tk
assert not tk.__file__.startswith(sys.argv[1]), tk.__file__  # the installed copy, not the source tree
assert "cpu" in tk.available_backends(), tk.backend_status()
z = torch.randn(33, 5)
q = tk.log_qz(z, z, torch.zeros(33, 5), dataset_size=330, backend="cpu")
ref = tk.log_qz(z, z, torch.zeros(33, 5), dataset_size=330, backend="torch")
assert torch.allclose(q.log_qz, ref.log_qz, atol=1e-4)
print("ok", tk.__version__, tk.compiled_backends())
"""


def _source_copy(dest: str) -> str:
    """The files of a clean clone (tracked and untracked-but-not-ignored), without build outputs."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\n")
    for f in filter(None, files):
        src = os.path.join(ROOT, f)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, f))
    return dest


def _env_without_cuda_home():
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "TRITON_INTERPRET",
                                                            "PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _fresh_venv(path: str) -> str:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return os.path.join(path, "bin", "python")


def _run(cmd, cwd, env, timeout):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


pytestmark = pytest.mark.skipif(shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")),
                                reason="needs the git checkout")


INSTALLED = r"""
import importlib.metadata, os, sys, tcvae_kernels as tk
from tcvae_kernels import _build_config as cfg
assert not os.path.abspath(os.getcwd()).startswith(sys.argv[1])  # run from outside the tree
assert importlib.metadata.version("tcvae_kernels") == tk.__version__
assert os.path.isfile(os.path.join(os.path.dirname(tk.__file__), "py.typed"))
assert cfg.EXTENSION and "cpu" in tk.compiled_backends() and "cpu" in tk.available_backends(), tk.backend_status()
assert ("cuda" in tk.compiled_backends()) == cfg.CUDA, (tk.compiled_backends(), cfg.CUDA_REASON)
print("ok", tk.__version__, tk.compiled_backends())
"""


def test_the_installed_package_imports_from_outside_the_tree(tmp_path):
    """What make test installed: metadata, the build record, py.typed, the fused cpu backend."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = _run([sys.executable, "-c", INSTALLED, ROOT], cwd=str(tmp_path), env=env, timeout=600).stdout
    assert out.startswith("ok")


@pytest.mark.slow
def test_plain_pip_install_into_a_fresh_venv(tmp_path):
    """``pip install <clean copy>``: the isolated build from pyproject.toml's build requirements,
    the CPU kernel only (FORCE_ONLY_CPU=1: the CUDA compile is make build's)."""
    src = _source_copy(str(tmp_path / "src"))
    py = _fresh_venv(str(tmp_path / "venv"))
    env = _env_without_cuda_home()
    env["FORCE_ONLY_CPU"] = "1"
    r = _run([py, "-m", "pip", "install", "-v", src], cwd=str(tmp_path), env=env, timeout=1800)
    said = [line for line in (r.stdout + r.stderr).splitlines() if "tcvae_kernels: building" in line]
    assert said and "FORCE_ONLY_CPU" in said[0], "the build must say what it builds, and why"
    out = _run([py, "-c", SMOKE, src], cwd=str(tmp_path), env=env, timeout=600).stdout
    assert out.startswith("ok")


@pytest.mark.slow
def test_wheel_builds_and_installs_into_a_fresh_venv(tmp_path):
    """A wheel built against the torch of this environment (``--no-isolation``), CPU kernel only,
    installed into a fresh venv: what the wheel ships (the extension, py.typed) is enough."""
    src = _source_copy(str(tmp_path / "src"))
    env = _env_without_cuda_home()
    env["FORCE_ONLY_CPU"] = "1"
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), src],
         cwd=src, env=env, timeout=1800)
    wheels = os.listdir(tmp_path / "dist")
    assert len(wheels) == 1 and wheels[0].endswith(".whl"), wheels
    py = _fresh_venv(str(tmp_path / "venv"))
    _run([py, "-m", "pip", "install", str(tmp_path / "dist" / wheels[0])], cwd=str(tmp_path), env=env, timeout=1800)
    out = _run([py, "-c", SMOKE, src], cwd=str(tmp_path), env=env, timeout=600).stdout
    assert out.startswith("ok") and "'cuda'" not in out  # a CPU-only wheel, and it says so


def _shipped_modules() -> list[str]:
    """The Python modules a wheel of this tree ships: pyproject.toml's packages as setuptools expands
    them (``packages.find``, what setup.py's build installs), each with its own .py files."""
    from setuptools.config.pyprojecttoml import read_configuration

    packages = read_configuration(os.path.join(ROOT, "pyproject.toml"), expand=True)["tool"]["setuptools"]["packages"]
    out = []
    for pkg in packages:
        for f in sorted(os.listdir(os.path.join(ROOT, *pkg.split(".")))):
            if f.endswith(".py"):
                out.append(pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}")
    return out


#: what users import or run: the package, its commands (``python -m tcvae_kernels check|bench``) and
#: the documented integration (README.md, docs/getting-started.md)
ENTRY_POINTS = ("tcvae_kernels", "tcvae_kernels.__main__", "tcvae_kernels.integrations.pythae",
                "tcvae_kernels.integrations.disent")


def test_the_wheel_ships_only_what_the_package_runs():
    """Every module the wheel ships is imported (at module level or inside a function) from what
    users import or run; contributor tooling (the GPU code's analysis and its planted kernels, the
    CUDA emulation backend, the studies' data) lives in bench/, tests/ or python/, not in the wheel."""
    from import_graph import import_graph, package_modules, reached

    shipped = _shipped_modules()
    assert "tcvae_kernels.backends.base" in shipped and "tcvae_kernels.tools.check" in shipped, shipped
    used = reached(import_graph(package_modules()), ENTRY_POINTS)
    assert set(ENTRY_POINTS) <= set(shipped)
    unused = [m for m in shipped if m not in used]
    assert not unused, f"the wheel ships modules nothing of the package imports: {unused}"
    tooling = {f[:-3] for d in ("bench", "tests") for f in os.listdir(os.path.join(ROOT, d)) if f.endswith(".py")}
    assert {"gpu_report", "planted", "cuda_emulation"} <= tooling  # where they live
    twice = [m for m in shipped if m.rpartition(".")[2] in tooling]
    assert not twice, f"contributor tooling of bench/ or tests/ in the wheel too: {twice}"


def _setup_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tcvae_setup_probe", os.path.join(ROOT, "setup.py"))
    src = open(os.path.join(ROOT, "setup.py")).read()
    head = src[: src.index("ext_modules, cmdclass = _extensions()")]  # the helpers, without running setup()
    mod = type(sys)("tcvae_setup_probe")
    mod.__file__ = spec.origin
    exec(compile(head, spec.origin, "exec"), mod.__dict__)
    return mod


def _fake_toolkit(root, release="13.0", runtime=True):
    os.makedirs(os.path.join(root, "bin"))
    nvcc = os.path.join(root, "bin", "nvcc")
    with open(nvcc, "w") as f:
        f.write(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    os.chmod(nvcc, 0o755)
    if runtime:
        os.makedirs(os.path.join(root, "lib64"))
        open(os.path.join(root, "lib64", "libcudart.so"), "w").close()
    return root


def test_cuda_detection_explains_what_is_missing(tmp_path, monkeypatch):
    """A wrapper nvcc without the runtime library (torch's guess here: /usr/local) is skipped with
    the reason; a toolkit of another major CUDA version is too; a complete one is taken."""
    setup = _setup_module()
    wrapper = _fake_toolkit(str(tmp_path / "wrapper"), runtime=False)
    old = _fake_toolkit(str(tmp_path / "cuda12"), release="12.4")
    good = _fake_toolkit(str(tmp_path / "cuda13"))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    home, why = setup._find_cuda("13.0", wrapper, default=None)
    assert home is None and f"{wrapper} (torch's guess) has no libcudart" in why
    home, why = setup._find_cuda(None, good, default=None)
    assert home is None and "CPU build" in why
    monkeypatch.setenv("CUDA_HOME", old)
    home, why = setup._find_cuda("13.0", wrapper, default=None)
    assert home is None and f"{old} ($CUDA_HOME) is CUDA 12.4, torch was built with CUDA 13.0" in why
    home, why = setup._find_cuda("13.0", wrapper, default=good)  # the default location, after the others
    assert home == good and "CUDA 13.0" in why
