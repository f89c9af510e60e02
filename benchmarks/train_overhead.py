"""Training overhead: time per optimizer step of each method against ``none``, same model, data and recipe.

Every method trains ``--steps`` steps of the CIFAR ResNet-20 (``--config cifar``: 32 px, batch 128) on
``../shared/data/cifar10/train`` through :func:`diffcoremix.train.train`, the code users run. Methods are run in
``--rounds`` interleaved rounds (this machine is shared and noisy), each round in a fresh run folder; per method
the median seconds per step over all rounds' steps after the first of each run, split into data (loading,
decoding, transforms, partner included), mix and compute. The ratio to ``none`` is the overhead (goal:
``diffcoremix`` within +10%, the paper's "comparable overhead").

``--workers N`` loads data in N DataLoader processes (overlapping loading with compute, as real training does);
the default 0 loads in the training process, so the partner's cost shows in full.

The ``bare loop`` contender is the same model, transforms, optimizer and batch in the plainest loop a user would write
(torchvision ``ImageFolder`` + ``DataLoader``, no tool), timed the same way (data and compute seconds per step): the
ratio of ``none`` to it is what the tool's own loop adds (issue 29's aim: 1.02x).

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

BARE = "bare loop"
"""The contender without the tool: torchvision ``ImageFolder`` + ``DataLoader`` + the same model, transforms,
optimizer and batch, as a user would write it (issue 29: ``none`` should cost no more per step)."""
METHODS = (BARE, "none", "mixup", "cutmix", "synthetic-sub", "diffcoremix-pixel", "diffcoremix-patch", "diffcoremix")
KEYS = ("step", "data_s", "mix_s", "compute_s")


def bare_loop(data: Path, recipe: TrainConfig, steps: int, workers: int, seed: int) -> list[dict[str, float]]:
    """``steps`` steps of the plainest training loop on ``data``: per step, data and compute seconds."""
    import time

    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from diffcoremix.classifiers import create_model
    from diffcoremix.train.transforms import train_transform

    torch.manual_seed(seed)
    dataset = ImageFolder(str(data), transform=train_transform(recipe.transform, recipe.img_size, recipe.mean,
                                                               recipe.std))  # fmt: skip
    loader = DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0)  # fmt: skip
    model = create_model(recipe.model, len(dataset.classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                                weight_decay=recipe.weight_decay)  # fmt: skip
    model.train()
    lines: list[dict[str, float]] = []
    while len(lines) < steps:
        batches = iter(loader)
        while len(lines) < steps:
            started = time.perf_counter()
            try:
                images, labels = next(batches)
            except StopIteration:
                break
            loaded = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lines.append({"data_s": loaded - started, "mix_s": 0.0, "compute_s": time.perf_counter() - loaded})
    return lines


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
                if method == BARE:
                    lines = bare_loop(data, recipe, args.steps, args.workers, round_)
                else:
                    settings = {"method": method, "partners": "real", "max_steps": args.steps, "workers": args.workers}
                    config = TrainConfig(**{**recipe.__dict__, **settings, "seed": round_})
                    run = Path(tmp) / f"{method}-{round_}"
                    train(data, config=config, output=run)
                    lines = read_metrics(run, "step")
                for line in lines[1:]:
                    times[method]["step"].append(line["data_s"] + line["mix_s"] + line["compute_s"])
                    for key in KEYS[1:]:
                        times[method][key].append(line[key])
                print(f"round {round_ + 1}/{args.rounds} {method}: done", file=sys.stderr)
    base = statistics.median(times["none"]["step"]) if "none" in times else None
    bare = statistics.median(times[BARE]["step"]) if BARE in times else None
    print(f"ResNet-20, batch {recipe.batch_size}, {args.steps} steps x {args.rounds} rounds, workers {args.workers}, "
          "partners: real images of the class (the same loading cost as generated ones)")  # fmt: skip
    print("| method | ms/step | data ms | mix ms | compute ms | vs none | vs bare loop |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method in methods:
        med = {k: 1000 * statistics.median(v) for k, v in times[method].items()}
        ratio = f"{(med['step'] / 1000 / base - 1) * 100:+.1f}%" if base else "n/a"
        to_bare = f"{med['step'] / 1000 / bare:.3f}x" if bare else "n/a"
        print(f"| {method} | {med['step']:.0f} | {med['data_s']:.0f} | {med['mix_s']:.1f} | {med['compute_s']:.0f} | "
              f"{ratio} | {to_bare} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
