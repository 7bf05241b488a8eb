"""Old module paths (before the backends/, evaluation/, tools/ layout) keep importing: ``import
tcvae_kernels.metrics`` or ``from tcvae_kernels.triton_kernels import log_qz_op`` give the moved
module itself (the same object, so patching it patches the real one), imported only when asked for."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: old module name -> where it lives now
MOVED = {
    "tcvae_kernels.ops": "tcvae_kernels.backends.extension",
    "tcvae_kernels.triton_kernels": "tcvae_kernels.backends.triton_kernels",
    "tcvae_kernels.data": "tcvae_kernels.evaluation.data",
    "tcvae_kernels.evaluate": "tcvae_kernels.evaluation.evaluate",
    "tcvae_kernels.metrics": "tcvae_kernels.evaluation.metrics",
    "tcvae_kernels.check": "tcvae_kernels.tools.check",
    "tcvae_kernels.benchmark": "tcvae_kernels.tools.benchmark",
    "tcvae_kernels.gpu_report": "tcvae_kernels.tools.gpu_report",
    "tcvae_kernels._planted": "tcvae_kernels.tools._planted",
}


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # already executed under its new name


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
