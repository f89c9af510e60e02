"""The first evidence tables: classifiers trained with each method under one recipe, on real photographs.

Three tables (the commands below are exactly what runs; every step resumes, so a rerun finishes what is missing):

- ``cifar10``: CIFAR-10 with 100 training images per class (``../shared/data/cifar10/train``), evaluated on the
  full 10,000-image test set; the CIFAR ResNet-20 from random initialisation (``--config cifar``), 400 optimizer
  steps of 128 images, seeds 0-2: ``none``, ``mixup``, ``cutmix``, ``synthetic-add`` and ``diffcoremix`` with
  tiny-preset generations (random weights: noise, the lower bound), and ``diffcoremix`` with ``real`` partners
  (another real image of the class: the bound of a perfect generator). About an hour on 2 CPU cores.
- ``flowers102``: Oxford Flowers-102 with 10 training images per class, its 1,020-image ``test`` folder as the
  test set; timm's ``resnet10t`` from random initialisation at 64 px, 240 steps of 64 images, seeds 0-1:
  ``none``, ``cutmix``, ``diffcoremix`` with real partners and with tiny-preset generations. About 40 minutes.

- ``cifar10-finetuned``: the ``cifar10`` recipe with generations that have content: those of
  ``benchmarks/generation_quality.py`` (the tiny generator fine-tuned on the same training images, one counterpart
  per image), filtered (the ResNet-20 prototype rule at its calibrated threshold, as that benchmark leaves them) and
  unfiltered (a copy re-filtered at threshold -1: every generation accepted); ``none``, ``synthetic-add`` and
  ``diffcoremix`` with each, seeds 0-2. Run ``generation_quality.py`` first.

- ``peers``: the peers under one recipe (issue 28): ``none``, ``mixup``, ``cutmix``, every recipe
  (``diffusemix``, ``diff-mix``, ``da-fusion``, ``real-guidance``, ``diffcoremix``, ``diffcoremix+``) and every usage
  mode with the text counterparts, on the ``cifar10-finetuned`` recipe with the fine-tuned generator's sets; see
  ``benchmarks/peers.py`` (its commands and its table, written to ``DIR/cifar10/peers.md``; what the runs measured
  is kept in ``benchmarks/results/peers_cifar10.<machine>.json``, one record per kind of machine). ``--seeds``
  [0,1,2,3,4].
- ``peers-flowers``: the same rows on Flowers-102 (10 training images per class, the ``flowers102`` recipe) with
  the tiny preset's sets (random weights: no generator fine-tuned on Flowers fits this CPU's budget); see
  ``benchmarks/peers.py``.

Run: ``.venv/bin/python benchmarks/train_evidence.py [--tables cifar10,flowers102] [--out DIR]``; the tables are
printed and written to ``DIR/<table>/results.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # benchmarks/peers.py
from common import REPO, shared_data  # benchmarks/common.py


def commands(table: str, data: Path, out: Path) -> list[list[str]]:
    """The augment and compare command lines of one table."""
    program = [sys.executable, "-m", "diffcoremix"]
    if table == "cifar10-finetuned":
        train, test = data / "cifar10" / "train", data / "cifar10" / "test"
        generated = REPO / "benchmarks" / ".work" / "generation_quality" / "generated"
        unfiltered = out / "unfiltered"
        recipe = ["--config", "cifar", "--seeds", "0,1,2", "--max-steps", "400"]
        embedder = f"resnet20:{data.parent / 'models' / 'resnet20_cifar10.th'}"
        return [
            [sys.executable, "-c", "import shutil, sys; from pathlib import Path; "
             "Path(sys.argv[2]).exists() or shutil.copytree(sys.argv[1], sys.argv[2])", str(generated),
             str(unfiltered)],
            [*program, "filter", str(unfiltered), "--embedder", embedder, "--threshold", "-1"],
            [*program, "compare", str(train), "--test", str(test), "--synthetic", str(generated), *recipe,
             "--methods", "none,synthetic-add,diffcoremix", "-o", str(out / "cifar-ft-filtered")],
            [*program, "compare", str(train), "--test", str(test), "--synthetic", str(unfiltered), *recipe,
             "--methods", "synthetic-add,diffcoremix", "-o", str(out / "cifar-ft-unfiltered")],
        ]  # fmt: skip
    if table == "cifar10":
        train, test, synth, size = data / "cifar10" / "train", data / "cifar10" / "test", out / "synth", "32"
        compare = ["--config", "cifar", "--methods",
                   "none,mixup,cutmix,synthetic-add,diffcoremix@real,diffcoremix@generated",
                   "--seeds", "0,1,2", "--max-steps", "400"]  # fmt: skip
    elif table == "flowers102":
        train, test, synth, size = data / table / "train", data / table / "test", out / "fsynth", "64"
        compare = ["--config", "cifar", "--model", "resnet10t", "--img-size", "64", "--transform", "imagenet",
                   "--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225", "-b", "64",
                   "--methods", "none,cutmix,diffcoremix@real,diffcoremix@generated", "--seeds", "0,1",
                   "--max-steps", "240"]  # fmt: skip
    else:
        raise SystemExit(f"unknown table {table!r}: cifar10, flowers102, cifar10-finetuned, peers or peers-flowers")
    return [
        [*program, "augment", str(train), "-o", str(synth), "--preset", "tiny", "--height", size, "--width", size,
         "--seed", "0"],
        [*program, "compare", str(train), "--test", str(test), "--synthetic", str(synth), *compare,
         "-o", str(out / ("cifar" if table == "cifar10" else "flowers"))],
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", default="cifar10,flowers102")
    parser.add_argument("--out", type=Path, default=Path("evidence_out"))
    parser.add_argument("--seeds", default="0,1,2,3,4", help="the peers table's seeds")
    args = parser.parse_args(argv)
    data = shared_data()
    for table in args.tables.split(","):
        study = peers.STUDIES.get(table)
        lines = peers.commands(data, args.out, args.seeds, study) if study else commands(table, data, args.out)
        for command in lines:
            print("$", " ".join(command[2:] if command[1] == "-m" else command), file=sys.stderr)
            one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # the peers tables' runs: one torch thread each
            subprocess.run(command, check=True, env=one_thread if study else None)
        if study:
            print(peers.table(args.out, study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
