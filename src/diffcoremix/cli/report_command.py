"""``diffcoremix report``: one self-contained HTML page about a generation run and its training (a thin shell over
:func:`diffcoremix.report.build_report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffcoremix.cli.commands import Command, show_progress


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT", help="a generate or augment output folder (read only)")
    parser.add_argument("--runs", nargs="+", type=Path, default=[], metavar="RUN",
                        help="training run folders: their curves")  # fmt: skip
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="a compare folder: the method table, the overhead plot and its runs' curves")  # fmt: skip
    parser.add_argument("--eval", dest="evaluation", type=Path, metavar="DIR",
                        help="an eval folder: figures per run, confusion matrices and the Grad-CAM grid")  # fmt: skip
    parser.add_argument("--data", type=Path, metavar="DATA",
                        help="DATA, if it moved since generation [the path OUT's run record names]")  # fmt: skip
    parser.add_argument(
        "-o", "--output", type=Path,
        help="the HTML file [OUT/report.html]; an existing file is replaced only if it is a diffcoremix report",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the grids' and distances' samples [0]")
    parser.add_argument("--grid", type=int, default=48, metavar="N",
                        help="cards per grid (kept, rejected), spread over the classes [48]")  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    from diffcoremix.report import build_report  # imports torch and matplotlib: only when reporting

    result = build_report(args.out, args.output, runs=args.runs, compare=args.compare, evaluation=args.evaluation,
                          data=args.data, seed=args.seed, grid=args.grid, progress=show_progress(args))  # fmt: skip
    print(f"report: {result.path} ({result.size / 1e6:.1f} MB, {len(result.sections)} sections, "
          f"{result.seconds:.1f} s)")  # fmt: skip
    print(f"open it: {result.path.resolve().as_uri()}")
    for note in result.notes:
        print(f"not shown: {note}")
    return 0


REPORT_COMMAND = Command(
    name="report",
    help="write one self-contained HTML page about OUT (provenance, budget, score histograms, candidate grids, KID, "
    "mixing preview) and its training (--runs, --compare, --eval)",
    add_arguments=_arguments,
    run=_run,
)
