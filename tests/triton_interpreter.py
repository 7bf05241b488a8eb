"""A test-session speed-up of Triton's interpreter (TRITON_INTERPRET=1): no re-patching of
triton.language on every device-function call.

A launch patches the language (``_patch_lang``: every builtin of tl, tl.tensor, tl.math wrapped,
found with ``inspect.getmembers``) and restores it when the grid is done. Every call of a
``@triton.jit`` helper inside the kernel (``InterpretedFunction.__call__``) patches again, though
nothing is left to patch for a module whose globals the launch has already seen: with our
kernels' helpers (_x2, _dw, the _dot0 ladders) that was half the interpreter's time. Here the
first ``_patch_lang`` per globals dict in a launch does the work and the later ones return an
empty scope; results are bitwise those of the unpatched interpreter (tests/kernels/test_triton.py)."""

from __future__ import annotations

import contextlib
import threading

_undo = None  # removes the installed speed-up


def skip_repeated_patching() -> bool:
    """Install the speed-up (once); False where this Triton's interpreter lacks ``_patch_lang``,
    ``_LangPatchScope`` or ``GridExecutor`` (then it runs as it ships)."""
    global _undo
    if _undo is not None:
        return True
    try:
        from triton.runtime import interpreter as it

        real_patch, real_call, empty = it._patch_lang, it.GridExecutor.__call__, it._LangPatchScope
    except (ImportError, AttributeError):  # pragma: no cover - another Triton: run it as it is
        return False
    state = threading.local()

    def patch_lang(fn):
        seen = getattr(state, "seen", None)
        if seen is not None:  # inside a launch: once per module's globals
            if id(fn.__globals__) in seen:
                return empty()
            seen.add(id(fn.__globals__))
        return real_patch(fn)

    def launch(self, *args, **kwargs):
        state.seen = set()
        try:
            return real_call(self, *args, **kwargs)
        finally:
            state.seen = None

    def undo():
        it._patch_lang, it.GridExecutor.__call__ = real_patch, real_call

    it._patch_lang, it.GridExecutor.__call__ = patch_lang, launch
    _undo = undo
    return True


@contextlib.contextmanager
def as_shipped():
    """The interpreter without the speed-up, for the duration of the block."""
    global _undo
    installed, undo = _undo is not None, _undo
    if installed:
        undo()
        _undo = None
    try:
        yield
    finally:
        if installed:
            skip_repeated_patching()
