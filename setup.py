"""Build of the C++/CUDA extension ``tcvae_kernels._C`` (metadata: pyproject.toml).

The extension holds the custom ops ``torch.ops.tcvae.*``: the CPU kernel always, the CUDA kernel
when a usable CUDA toolkit is found. Switches (environment variables):

    FORCE_CUDA=1            build the CUDA kernel with $CUDA_HOME (or torch's guess), skipping the checks
    FORCE_ONLY_CPU=1        never build the CUDA kernel
    TCVAE_NO_EXTENSION=1    pure-Python install (only the "torch" backend)
    TCVAE_CPU_CAPABILITY    default | avx2 | avx512 (default: the best this build machine has)
    TORCH_CUDA_ARCH_LIST    CUDA architectures (default here: "8.0;9.0" when no GPU is visible)
    CUDA_HOME               the CUDA toolkit (default: found, see _find_cuda)
    TCVAE_SANITIZE          e.g. "address,undefined": the CPU kernel only, with those sanitizers (-O1 -g;
                            `make sanitize` builds it in a copy of the tree, never into .venv)
    MAX_JOBS                parallel compile jobs

A usable toolkit has ``bin/nvcc`` and the CUDA runtime library (``libcudart``) and matches the
major CUDA version torch was built with. Without one the build says in one line that it builds the
CPU kernel only and why; the reason is also recorded in ``tcvae_kernels/_build_config.py``, which
``available_backends`` and the ``cuda`` backend's error message report.

    pip install .                          # isolated build: pip installs torch for the build
    pip install --no-build-isolation .     # against the torch already installed
"""

import glob
import os
import platform
import re
import subprocess
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _say(msg: str) -> None:
    print(f"tcvae_kernels: {msg}", file=sys.stderr, flush=True)


def _cpu_capability() -> str:
    """The SIMD level the CPU kernel is compiled for (ATen's at::vec names)."""
    forced = os.environ.get("TCVAE_CPU_CAPABILITY", "").strip().lower()
    if forced:
        if forced not in ("default", "avx2", "avx512"):
            raise SystemExit(f"TCVAE_CPU_CAPABILITY must be default, avx2 or avx512, got {forced!r}")
        return forced
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "default"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "default"
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= set(flags):
        return "avx512"
    if {"avx2", "fma", "f16c"} <= set(flags):
        return "avx2"
    return "default"


CAPABILITY_FLAGS = {
    "default": [],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": [
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
    ],
}


def _nvcc_release(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def _find_cuda(torch_cuda: str | None, torch_guess: str | None,
               default: str | None = "/usr/local/cuda") -> tuple[str | None, str]:
    """(CUDA toolkit root, description) or (None, why none is usable). Candidates in order:
    $CUDA_HOME, $CUDA_PATH, torch's guess (from the nvcc on PATH, which may be a wrapper), and
    /usr/local/cuda; the first with bin/nvcc, libcudart and torch's major CUDA version wins."""
    if torch_cuda is None:
        return None, "this torch is a CPU build (torch.version.cuda is None)"
    cands, seen, why = [], set(), []
    for where, home in (("$CUDA_HOME", os.environ.get("CUDA_HOME")), ("$CUDA_PATH", os.environ.get("CUDA_PATH")),
                        ("torch's guess", torch_guess), ("default", default)):
        if home and os.path.realpath(home) not in seen:
            seen.add(os.path.realpath(home))
            cands.append((where, home))
    for where, home in cands:
        nvcc = os.path.join(home, "bin", "nvcc")
        libs = [os.path.join(home, sub, "libcudart.so") for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"))]
        libs += glob.glob(os.path.join(home, "lib64", "libcudart.so.*"))
        if not os.path.exists(nvcc):
            why.append(f"{home} ({where}) has no bin/nvcc")
            continue
        if not any(os.path.exists(p) for p in libs):
            why.append(f"{home} ({where}) has no libcudart (the CUDA runtime library)")
            continue
        release = _nvcc_release(nvcc)
        if release is None:
            why.append(f"{nvcc} ({where}) does not run")
            continue
        if release.split(".")[0] != torch_cuda.split(".")[0]:
            why.append(f"{home} ({where}) is CUDA {release}, torch was built with CUDA {torch_cuda}")
            continue
        return home, f"CUDA {release} at {home} ({where})"
    return None, ("no usable CUDA toolkit: " + "; ".join(why)) if why else "no CUDA toolkit found"


def _write_build_config(**cfg) -> None:
    """tcvae_kernels/_build_config.py: what this build compiled and why (read at run time)."""
    path = os.path.join(HERE, "tcvae_kernels", "_build_config.py")
    with open(path, "w") as f:
        f.write('"""Written by setup.py at build time: what the extension was compiled with."""\n\n')
        for k, v in cfg.items():
            f.write(f"{k.upper()} = {v!r}\n")


def _extensions():
    if _flag("TCVAE_NO_EXTENSION"):
        _say("pure-Python install (TCVAE_NO_EXTENSION=1): only the 'torch' backend")
        _write_build_config(extension=False, cuda=False, cuda_reason="TCVAE_NO_EXTENSION=1")
        return [], {}
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))

    import torch
    from torch.utils import cpp_extension

    sanitize = os.environ.get("TCVAE_SANITIZE", "").strip()
    if _flag("FORCE_ONLY_CPU") or sanitize:
        home, why = None, "FORCE_ONLY_CPU=1" if not sanitize else f"TCVAE_SANITIZE={sanitize}"
    elif not cuda_sources:
        home, why = None, "no CUDA sources"
    else:
        home, why = _find_cuda(torch.version.cuda, cpp_extension.CUDA_HOME)
    if home is None and _flag("FORCE_CUDA") and not _flag("FORCE_ONLY_CPU") and cuda_sources:
        home = os.environ.get("CUDA_HOME") or cpp_extension.CUDA_HOME
        if home is None:
            raise SystemExit(f"tcvae_kernels: FORCE_CUDA=1 but no CUDA toolkit to build with: {why}; set CUDA_HOME")
        why = f"FORCE_CUDA=1 with {home}, although: {why}"
    if home is not None:
        os.environ["CUDA_HOME"] = home
        cpp_extension.CUDA_HOME = home  # torch reads it at import: point its include/library paths here
        _say(f"building the CPU and CUDA kernels ({why})")
    else:
        _say(f"building the CPU kernel only: {why} (set CUDA_HOME to a CUDA toolkit to build the CUDA kernel)")
    _write_build_config(extension=True, cuda=home is not None, cuda_reason=None if home else why,
                        torch_version=torch.__version__)

    capability = _cpu_capability()
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off", "-DTCVAE_CPU_CAPABILITY_NAME=\"" + capability + "\""]
    cxx += CAPABILITY_FLAGS[capability]
    link = ["-fopenmp"]
    if sanitize:  # halt at the first report of any kind (UBSan would otherwise print and go on)
        san = [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        cxx = [f for f in cxx if f != "-O3"] + ["-O1", "-g", f"-DTCVAE_SANITIZE_NAME=\"{sanitize}\""] + san
        link += san
    kwargs = dict(
        name="tcvae_kernels._C",
        sources=cpp_sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
        py_limited_api=True,
    )
    if home is not None:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        kwargs["sources"] = cpp_sources + cuda_sources
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-DTCVAE_WITH_CUDA", "--use_fast_math", "-lineinfo",
                                                "--expt-relaxed-constexpr",
                                                "--threads", "2"]  # the two archs in parallel: the build's long pole
        kwargs["extra_compile_args"]["cxx"] = cxx + ["-DTCVAE_WITH_CUDA"]
        ext = cpp_extension.CUDAExtension(**kwargs)
    else:
        ext = cpp_extension.CppExtension(**kwargs)
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
