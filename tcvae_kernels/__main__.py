"""Command line: ``python -m tcvae_kernels {check,bench} [options]`` (``--help`` on each)."""

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("check", "bench")
    if not argv or argv[0] not in commands:
        print(f"usage: python -m tcvae_kernels {{{','.join(commands)}}} [options]", file=sys.stderr)
        print("  check  cross-check every available backend against the float64 reference", file=sys.stderr)
        print("  bench  time forward and forward+backward against the materialized formula", file=sys.stderr)
        return 2
    if argv[0] == "check":
        from .tools.check import main as run
    else:
        from .tools.benchmark import main as run
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
