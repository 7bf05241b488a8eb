"""Docstrings with shared parts, written once: ``{name}`` placeholders filled when the module loads."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def fill_doc(**parts: str) -> Callable[[F], F]:
    """A decorator replacing each ``{name}`` of the decorated function's or class's docstring by
    ``parts[name]`` (plain replacement: other braces stay as written)."""

    def fill(obj: F) -> F:
        doc = obj.__doc__ or ""
        for name, text in parts.items():
            doc = doc.replace("{" + name + "}", text)
        obj.__doc__ = doc
        return obj

    return fill
