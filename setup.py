"""Build of tcvae_kernels and its C++/CUDA extension ``tcvae_kernels._C``.

The extension holds the custom ops ``torch.ops.tcvae.*``: the CPU kernel always, the CUDA
kernel when CUDA is enabled. Switches (environment variables):

    FORCE_CUDA=1            build the CUDA kernel even if torch/nvcc detection says no
    FORCE_ONLY_CPU=1        never build the CUDA kernel
    TCVAE_NO_EXTENSION=1    pure-Python install (only the "torch" backend)
    TCVAE_CPU_CAPABILITY    default | avx2 | avx512 (default: the best this build machine has)
    TORCH_CUDA_ARCH_LIST    CUDA architectures (default here: "8.0;9.0" when no GPU is visible)
    MAX_JOBS                parallel compile jobs

Install with ``pip install --no-build-isolation -e .`` after torch is installed.
"""

import glob
import os
import platform

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


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


def _extensions():
    if _flag("TCVAE_NO_EXTENSION"):
        return [], {}
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    if not cpp_sources:
        return [], {}

    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda = bool(cuda_sources) and not _flag("FORCE_ONLY_CPU") and (
        _flag("FORCE_CUDA") or (torch.version.cuda is not None and CUDA_HOME is not None)
    )
    capability = _cpu_capability()
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off", "-DTCVAE_CPU_CAPABILITY_NAME=\"" + capability + "\""]
    cxx += CAPABILITY_FLAGS[capability]
    kwargs = dict(
        name="tcvae_kernels._C",
        sources=cpp_sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        kwargs["sources"] = cpp_sources + cuda_sources
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-DTCVAE_WITH_CUDA", "--use_fast_math",
                                                "-lineinfo"]
        kwargs["extra_compile_args"]["cxx"] = cxx + ["-DTCVAE_WITH_CUDA"]
        ext = CUDAExtension(**kwargs)
    else:
        ext = CppExtension(**kwargs)
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    name="tcvae_kernels",
    version="0.1.0",
    description="β-TCVAE total-correlation loss with fused CPU, Triton and CUDA kernels",
    packages=find_packages(include=["tcvae_kernels", "tcvae_kernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy"],
    extras_require={"triton": ["triton"], "test": ["pytest", "pytest-benchmark", "hypothesis"], "plot": ["matplotlib"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
