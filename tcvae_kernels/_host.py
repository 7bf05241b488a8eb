"""The checks that read device values on the host, as custom ops with an ordered side effect.

``torch.compile`` keeps such an op in the graph (``fullgraph=True`` compiles; dead-code
elimination cannot drop an op with an effect) and runs it on every call of the compiled step; a CUDA
graph (``mode="reduce-overhead"``) is split around it (tag ``cudagraph_unsafe``, inductor's graph
partitions), so it runs outside the captured region. Called eagerly it is a plain call. What each
check costs on a GPU: :func:`check_finite` one device sync per call (``check_finite=True`` asks for
it); :func:`callback`'s users read a value every so many calls and return at once otherwise
(the losses' regime warning: ``REGIME_CHECK_EVERY``).
"""

from __future__ import annotations

import itertools
import os
import sys
import weakref
from collections.abc import Callable, Sequence

import torch
from torch._library.effects import EffectType

_TAGS = (torch.Tag.cudagraph_unsafe,)


@torch.library.custom_op("tcvae_host::check_finite", mutates_args=(), tags=_TAGS)
def _check_finite(tensors: list[torch.Tensor], names: str, what: str) -> None:
    for name, t in zip(names.split("|"), tensors):  # names: one string (a schema has no list of strings)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or infinite values ({what})")


@_check_finite.register_fake
def _check_finite_fake(tensors, names, what):
    return None


def check_finite(tensors: Sequence[torch.Tensor], names: Sequence[str], what: str = "check_finite=True") -> None:
    """Raise ValueError naming the first of ``tensors`` that holds NaN or ±inf (a device sync on a GPU)."""
    torch.ops.tcvae_host.check_finite(list(tensors), "|".join(names), what)


#: key -> the host function of a :func:`callback` (weakly held: a loss that is gone is forgotten)
_CALLBACKS: dict[int, weakref.WeakMethod] = {}
_KEYS = itertools.count(1)


def register(method: Callable[..., None]) -> int:
    """A key for :func:`callback` that calls the bound ``method(*tensors, *ints)``, held weakly."""
    key = next(_KEYS)
    _CALLBACKS[key] = weakref.WeakMethod(method)
    return key


@torch.library.custom_op("tcvae_host::callback", mutates_args=(), tags=_TAGS)
def _callback(tensors: list[torch.Tensor], ints: list[int], key: int) -> None:
    ref = _CALLBACKS.get(key)
    fn = ref() if ref is not None else None
    if fn is not None:
        fn(*tensors, *ints)


@_callback.register_fake
def _callback_fake(tensors, ints, key):
    return None


def user_stacklevel() -> int:
    """``warnings.warn``'s stacklevel that points at the first frame outside this package and torch:
    the user's call of the loss, eager or compiled (a callback runs under torch's op machinery)."""
    roots = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (sys.modules["tcvae_kernels"], torch))
    if "torch._inductor" in sys.modules:  # compiled: the graph's code is a module in inductor's cache
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        roots += (os.path.abspath(cache_dir()) + os.sep,)
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(roots):
        frame, level = frame.f_back, level + 1
    return level


def callback(key: int, tensors: Sequence[torch.Tensor], ints: Sequence[int] = ()) -> None:
    """Run the host function registered under ``key`` (:func:`register`) on ``tensors`` and ``ints``,
    on every call, compiled or not (the function decides when to read a value: a sync on a GPU)."""
    torch.ops.tcvae_host.callback([t.detach() for t in tensors], [int(i) for i in ints], key)


for _op in ("tcvae_host::check_finite", "tcvae_host::callback"):
    torch.library._register_effectful_op(_op, EffectType.ORDERED)
