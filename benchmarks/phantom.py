"""Phantom rendering speed on this machine: images per second per core at 256 x 256.

Target (issue "Foundation and the phantom"): at least 30 images/s per core. Measured, not
asserted: run `make bench-phantom` (or `python benchmarks/phantom.py --n 300`).

Three numbers, each the median of `--repeats` runs over the same `--n` sampled cases:
  render        pixels and masks only (`Case.render`)
  case          what `whatif phantom generate` does per image: render + PNG + report + JSON
  generate      the command end to end with --workers (default: all cores), per core
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

from training.phantom.cases import sample_case
from training.phantom.generate import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    cases = [sample_case(2024, i) for i in range(args.n)]
    cases[0].render(args.size)  # warm caches (lung masks, label table)

    def rate(fn) -> float:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return args.n / statistics.median(times)

    render_rate = rate(lambda: [c.render(args.size) for c in cases])
    case_rate = rate(lambda: [json.dumps(c.manifest_row("x")) and c.render(args.size).png_bytes() for c in cases])
    with tempfile.TemporaryDirectory() as tmp:
        gen_rate = rate(lambda: generate(args.n, args.size, 2024, tmp, workers=args.workers, progress=False))
    mean_findings = sum(len(c.findings) for c in cases) / len(cases)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; size {args.size}; "
        f"n={args.n}, mean {mean_findings:.2f} findings per image; median of {args.repeats}"
    )
    print(f"render only           {render_rate:7.1f} img/s (1 core)")
    print(f"render+png+report     {case_rate:7.1f} img/s (1 core)   target >= 30")
    print(f"generate --workers {args.workers}  {gen_rate:7.1f} img/s total, {gen_rate / args.workers:.1f} per core")


if __name__ == "__main__":
    main()
