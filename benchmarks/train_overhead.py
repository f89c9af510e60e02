"""Training overhead: time per optimizer step of each method against ``none``, same model, data and recipe.

Every method trains ``--steps`` steps of the CIFAR ResNet-20 (``--config cifar``: 32 px, batch 128) on
``../shared/data/cifar10/train`` through :func:`diffcoremix.train.train`, the code users run. Methods are run in
``--rounds`` interleaved rounds (this machine is shared and noisy), each round in a fresh run folder; per method
the median seconds per step over all rounds' steps after the first of each run, split into data (loading,
decoding, transforms, partner included), mix and compute. The ratio to ``none`` is the overhead (goal:
``diffcoremix`` within +10%, the paper's "comparable overhead").

``--workers N`` loads data in N DataLoader processes (overlapping loading with compute, as real training does);
the default 0 loads in the training process, so the partner's cost shows in full.

Run: ``.venv/bin/python benchmarks/train_overhead.py [--steps 40] [--rounds 3] [--workers 0]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from common import shared_data  # benchmarks/common.py
from diffcoremix.config import build_config, load_config_file
from diffcoremix.train import TrainConfig, read_metrics, train

METHODS = ("none", "mixup", "cutmix", "synthetic-sub", "diffcoremix-pixel", "diffcoremix-patch", "diffcoremix")
KEYS = ("step", "data_s", "mix_s", "compute_s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    data = shared_data() / "cifar10" / "train"
    recipe = build_config(TrainConfig, load_config_file("cifar", "train"), section="train")
    methods = args.methods.split(",")
    times: dict[str, dict[str, list[float]]] = {m: {k: [] for k in KEYS} for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for method in methods:
                config = TrainConfig(**{**recipe.__dict__, "method": method, "partners": "real",
                                        "max_steps": args.steps, "workers": args.workers, "seed": round_})  # fmt: skip
                run = Path(tmp) / f"{method}-{round_}"
                train(data, config=config, output=run)
                for line in read_metrics(run, "step")[1:]:
                    times[method]["step"].append(line["data_s"] + line["mix_s"] + line["compute_s"])
                    for key in KEYS[1:]:
                        times[method][key].append(line[key])
                print(f"round {round_ + 1}/{args.rounds} {method}: done", file=sys.stderr)
    base = statistics.median(times["none"]["step"]) if "none" in times else None
    print(f"ResNet-20, batch {recipe.batch_size}, {args.steps} steps x {args.rounds} rounds, workers {args.workers}, "
          "partners: real images of the class (the same loading cost as generated ones)")  # fmt: skip
    print("| method | ms/step | data ms | mix ms | compute ms | vs none |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for method in methods:
        med = {k: 1000 * statistics.median(v) for k, v in times[method].items()}
        ratio = f"{(med['step'] / 1000 / base - 1) * 100:+.1f}%" if base else "n/a"
        print(f"| {method} | {med['step']:.0f} | {med['data_s']:.0f} | {med['mix_s']:.1f} | {med['compute_s']:.0f} | "
              f"{ratio} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
