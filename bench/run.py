"""Run every benchmark under bench/ and print one table (the same as ``ctloop bench``).

    python bench/run.py [--quick] [--only serving ...] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.demo.bench import render_table, run_benchmarks  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short measurements")
    parser.add_argument("--only", action="append", default=None, help="run only this script (repeatable)")
    parser.add_argument("--out", default=None, help="folder of the JSON results (default bench/results)")
    args = parser.parse_args(argv)
    results, path = run_benchmarks(quick=args.quick, only=args.only, out_dir=args.out,
                                   progress=lambda line: print(line, file=sys.stderr))
    print(render_table(results))
    print(f"\nJSON: {path}")
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
