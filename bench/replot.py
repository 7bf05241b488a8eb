"""bench/cpu_methods.png from bench/RESULTS.md's "All methods" tables (no new measurement): the
recorded medians and peak memories drawn by ``tcvae_kernels.tools.benchmark.plot``.

    python bench/replot.py [--results bench/RESULTS.md] [--out bench/cpu_methods.png]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from tcvae_kernels.tools.benchmark import plot

HERE = Path(__file__).resolve().parent
UNITS = {"ms": 1e-3, "s": 1.0, "us": 1e-6}


def records_from_results(text: str) -> tuple[list[dict], dict]:
    """The cells ``time / memory`` of the "All methods" section's forward and forward + backward tables."""
    section = text.split("### All methods", 1)[1].split("\n### ", 1)[0]
    head = re.search(r"^\S.* · (.+?) · torch .*? · (\w+) · threads=(\d+)", section, re.M)
    records, methods, dims = [], [], []
    for mode, title in (("fwd", "**Forward (no grad)**"), ("fwdbwd", "**Forward + backward")):
        table = section.split(title, 1)[1].split("\n\n", 2)[1]
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
        cols = rows[0]
        for row in rows[2:]:
            m, d = int(row[0]), int(row[1])
            dims += [d] if d not in dims else []
            for name, cell in zip(cols[2:], row[2:]):
                got = re.match(r"([\d.e+-]+) (ms|s|us) / ([\d.]+) MiB", cell)
                if got:
                    methods += [name] if name not in methods else []
                    records.append(dict(method=name, mode=mode, M=m, D=d,
                                        seconds=float(got.group(1)) * UNITS[got.group(2)],
                                        peak_bytes=float(got.group(3)) * 2**20))
    meta = dict(modes=["fwd", "fwdbwd"], methods=methods, dims=dims, device_name=head.group(1),
                dtype=head.group(2), threads=int(head.group(3)))
    return records, meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--out", default=str(HERE / "cpu_methods.png"))
    a = p.parse_args(argv)
    records, meta = records_from_results(Path(a.results).read_text())
    print(plot(records, meta, a.out), f"({len(records)} cells, methods {meta['methods']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
