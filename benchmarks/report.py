"""Report build time and size on a large run: 100,000 candidates (a synthetic manifest, tests/synthetic_run.py).

The run has what ``generate`` + ``filter`` (+ ``judge``) write, in their real formats, made without a model. The
report is built twice (a cold and a warm build: the second finds the page cache and Python's imports warm) and
timed per section; reading the manifest alone is timed beside it, so the ratio says what the report adds to the
read every tool of ours does. Goals: under 60 s, and the page under ``REPORT_MAX_BYTES``.

Run: ``.venv/bin/python benchmarks/report.py [--candidates 100000] [--classes 100]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.synthetic_run, shared with the scale test

from tests.synthetic_run import make_synthetic_run

from diffcoremix.manifest import read_manifest
from diffcoremix.report import REPORT_MAX_BYTES, build_report


class _Sections(logging.Handler):
    """Collects the report's "<section> drawn in <s> s" lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage().removeprefix("report: "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args(argv)
    handler = _Sections()
    logger = logging.getLogger("diffcoremix.report")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        _, out = make_synthetic_run(root, candidates=args.candidates, classes=args.classes, judged=True)
        print(f"synthetic run: {args.candidates:,} candidates, {args.classes} classes, made in "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        start = time.perf_counter()
        table = read_manifest(out)
        read_s = time.perf_counter() - start
        print(f"read_manifest alone: {read_s:.1f} s ({len(table):,} rows)")
        for build in ("cold", "warm"):
            handler.lines.clear()
            result = build_report(out, root / f"{build}.html", progress=True)
            print(f"report ({build}): {result.seconds:.1f} s = {result.seconds / read_s:.1f}x reading the manifest; "
                  f"{result.size / 2**20:.2f} MiB ({result.size / REPORT_MAX_BYTES:.0%} of the "
                  f"{REPORT_MAX_BYTES / 2**20:.0f} MiB bound); sections: " + ", ".join(handler.lines))  # fmt: skip
        ok = result.seconds < 60 and result.size < REPORT_MAX_BYTES
        print("goal (under 60 s, under the bound):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
