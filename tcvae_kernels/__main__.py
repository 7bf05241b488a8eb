"""Command line: ``python -m tcvae_kernels {check,bench} [options]`` (``--help`` on each)."""

from __future__ import annotations

import sys

from ._version import __version__

#: command -> what it does (the one list: the usage text and the dispatch derive from it)
COMMANDS = {
    "check": "cross-check every available backend against the float64 reference",
    "bench": "time forward and forward+backward against the materialized formula",
}


def usage() -> str:
    lines = [f"usage: python -m tcvae_kernels {{{','.join(COMMANDS)}}} [options]   (--help on each; --version)", ""]
    lines += [f"  {name:<6} {what}" for name, what in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Runs a command; returns its exit status (2 for a missing or unknown command, printed to stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if argv[:1] == ["--version"]:
        print(f"tcvae_kernels {__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        why = "a command is missing" if not argv else f"unknown command {argv[0]!r}"
        print(f"python -m tcvae_kernels: {why}\n{usage()}", file=sys.stderr)
        return 2
    if argv[0] == "check":
        from .tools.check import main as run
    else:
        from .tools.benchmark import main as run
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
