"""Mixing speed: our ``diffcoremix`` mixer against torchvision v2 CutMix/MixUp and timm Mixup, on one batch.

Batch: 64 x 3 x 224 x 224 float32 on the CPU (and a partner batch of the same shape for ours). Each contender
is timed over ``--repeats`` interleaved rounds; medians are reported, with the ratio to torchvision's CutMix
(goal: ours no slower). Then the cost of mixing as a share of one ResNet-18 training step (forward, backward,
SGD update) at that batch.

Run: ``.venv/bin/python benchmarks/mixing.py [--repeats 20] [--steps 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from diffcoremix.mix import make_mixer


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=2, help="ResNet-18 training steps to time")
    args = parser.parse_args(argv)
    from timm.data import Mixup
    from torchvision.models import resnet18
    from torchvision.transforms import v2

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 224, 224, generator=g)
    partner = torch.rand(64, 3, 224, 224, generator=g)
    y = torch.randint(0, 1000, (64,), generator=g)
    ours_half = make_mixer("diffcoremix", p=0.5)
    ours_all = make_mixer("diffcoremix", p=1.0)
    tv_cutmix, tv_mixup = v2.CutMix(num_classes=1000), v2.MixUp(num_classes=1000)
    timm_mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, num_classes=1000, label_smoothing=0.0)
    contenders: dict[str, Callable[[], object]] = {
        "ours diffcoremix p=0.5": lambda: ours_half(x, y, partner=partner, generator=g),
        "ours diffcoremix p=1": lambda: ours_all(x, y, partner=partner, generator=g),
        "torchvision CutMix": lambda: tv_cutmix(x, y),
        "torchvision MixUp": lambda: tv_mixup(x, y),
        "timm Mixup": lambda: timm_mixup(x.clone(), y),  # it mixes in place: give it a copy, like the others
    }
    for fn in contenders.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            times[name].append(timed(fn))
    median = {name: statistics.median(v) for name, v in times.items()}
    print(f"batch 64 x 3 x 224 x 224 float32, CPU ({torch.get_num_threads()} threads), median of {args.repeats}")
    base = median["torchvision CutMix"]
    for name, seconds in median.items():
        print(f"  {name:<24} {1000 * seconds:8.2f} ms   {seconds / base:5.2f}x torchvision CutMix")

    model = resnet18(num_classes=1000)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    step_time = statistics.median(timed(step) for _ in range(args.steps))
    print(f"ResNet-18 training step at batch 64: {step_time:.2f} s; mixing takes "
          f"{100 * median['ours diffcoremix p=0.5'] / step_time:.2f}% of it (p=0.5), "
          f"{100 * median['ours diffcoremix p=1'] / step_time:.2f}% (p=1)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
