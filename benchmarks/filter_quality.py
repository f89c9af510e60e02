"""Filter quality on real photographs: does each reference rule keep good candidates and reject bad ones?

Embedder: the CIFAR-10 ResNet-20 of ``../shared/models`` (64-d pooled features). Data: ``../shared/data/cifar10/
test``. For each of ``--sources`` source images (spread over the ten classes), the candidates are
- other images of the same class (should be kept),
- images of other classes (should be rejected),
- degraded copies of the source: blank (mid gray), heavy noise, heavy blur (should be rejected),
and each rule scores every candidate against its reference. Reported per rule: ROC-AUC (keep vs reject) and the
accuracy at the best threshold (and that threshold). The class's real images for ``prototype``/``knn``/``first``
are its test images other than the candidates themselves. Then, per rule, the threshold that ``--calibrate`` suggests
from those real images alone (:func:`~diffcoremix.filter.suggest_threshold`, leave-one-out, pooled 10% quantile),
and what it does to the candidates: by design it should keep about 90% of the same-class ones.

Run: ``.venv/bin/python benchmarks/filter_quality.py [--sources 300]`` (about a minute on two cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from diffcoremix.data import list_images, open_image
from diffcoremix.embedders import load_embedder
from diffcoremix.filter import REFERENCE_RULES, RealIndex, score_candidates, suggest_threshold

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    if "DIFFCOREMIX_SHARED_DATA" in os.environ:
        return Path(os.environ["DIFFCOREMIX_SHARED_DATA"]).parent
    return next((p / "shared" for p in REPO.parents if (p / "shared" / "data").is_dir()), REPO.parent / "shared")


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half."""
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * ties)


def best_accuracy(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float]:
    """The threshold (keep iff score >= t) with the best balanced accuracy, and that accuracy."""
    best = (0.0, 0.0)
    for t in np.unique(np.concatenate([positive, negative])):
        accuracy = 0.5 * ((positive >= t).mean() + (negative < t).mean())
        if accuracy > best[0]:
            best = (float(accuracy), float(t))
    return best


def print_calibration(index: RealIndex, good: dict[str, list[float]], bad: dict[str, list[float]]) -> None:
    """Per rule: the threshold calibrated on the real images of ``index``, and how it splits the candidates."""
    print("thresholds suggested by --calibrate (real images only, pooled 10% quantile, leave-one-out):")
    print(f"{'rule':<10} {'suggested':>9} {'good kept':>10} {'bad rejected':>13} {'balanced acc':>13}")
    for rule in REFERENCE_RULES.names():
        threshold, _ = suggest_threshold(index, rule)
        kept, rejected = (np.array(good[rule]) >= threshold).mean(), (np.array(bad[rule]) < threshold).mean()
        print(f"{rule:<10} {threshold:9.3f} {kept:10.3f} {rejected:13.3f} {0.5 * (kept + rejected):13.3f}")


def degrade(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    if kind == "blank":
        return Image.new("RGB", image.size, (128, 128, 128))
    if kind == "noise":
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 120, size=(*image.size[::-1], 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(radius=4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=4, help="same-class and other-class candidates per source")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    shared = shared_dir()
    embedder = load_embedder(f"resnet20:{shared / 'models' / 'resnet20_cifar10.th'}")
    listing = list_images(shared / "data" / "cifar10" / "test")
    by_class = {c: items[:200] for c, items in listing.by_class().items()}  # 2,000 images: enough, and fast
    rng = np.random.default_rng(0)

    def embed(images: list[Image.Image]) -> np.ndarray:
        batch = torch.stack([embedder.preprocess(im) for im in images])
        rows: np.ndarray = embedder.embed_images(batch).numpy()
        return rows

    paths = [i.relpath for items in by_class.values() for i in items]
    pixels = {p: open_image(listing.root / p) for p in paths}
    vectors = dict(zip(paths, embed([pixels[p] for p in paths]), strict=True))
    classes = sorted(by_class)
    per_class = args.sources // len(classes)

    good: dict[str, list[float]] = {r: [] for r in REFERENCE_RULES.names()}
    bad: dict[str, list[float]] = {r: [] for r in REFERENCE_RULES.names()}
    bad_by_kind: dict[str, dict[str, list[float]]] = {r: {} for r in REFERENCE_RULES.names()}
    references: dict[str, list[str]] = {}
    for cls in classes:
        items = [i.relpath for i in by_class[cls]]
        sources, pool = items[:per_class], items[per_class:]
        others = [i.relpath for c in classes if c != cls for i in by_class[c]]
        # The class's reference images: those that are neither sources' candidates nor sources' degraded copies.
        references[cls] = pool[args.candidates * 2 :]
        index = RealIndex(vectors, {cls: references[cls]})
        for source in sources:
            same = list(rng.choice(pool[: args.candidates * 2], size=args.candidates, replace=False))
            other = list(rng.choice(others, size=args.candidates, replace=False))
            degraded = {k: degrade(pixels[source], k, rng) for k in ("blank", "noise", "blur")}
            degraded_vectors = embed(list(degraded.values()))
            candidates = np.stack([vectors[p] for p in same + other] + list(degraded_vectors))
            kinds = ["same"] * len(same) + ["other"] * len(other) + list(degraded)
            for rule in REFERENCE_RULES.names():
                refs = score_candidates(rule, index, candidates, [source] * len(kinds), [cls] * len(kinds))
                for kind, ref in zip(kinds, refs, strict=True):
                    if kind == "same":
                        good[rule].append(ref.score)
                    else:
                        bad[rule].append(ref.score)
                        bad_by_kind[rule].setdefault(kind, []).append(ref.score)

    n_sources = per_class * len(classes)
    print(f"ResNet-20 features on CIFAR-10 test photographs: {n_sources} sources, {args.candidates} same-class and "
          f"{args.candidates} other-class candidates and 3 degraded copies each")  # fmt: skip
    print(f"{'rule':<10} {'ROC-AUC':>8} {'best acc':>9} {'at t':>7}   AUC against: other-class  blank  noise   blur")
    for rule in REFERENCE_RULES.names():
        pos, neg = np.array(good[rule]), np.array(bad[rule])
        accuracy, threshold = best_accuracy(pos, neg)
        by_kind = "  ".join(
            f"{roc_auc(pos, np.array(bad_by_kind[rule][k])):5.3f}" for k in ("other", "blank", "noise", "blur")
        )
        print(f"{rule:<10} {roc_auc(pos, neg):8.3f} {accuracy:9.3f} {threshold:7.3f}   {'':>12}{by_kind}")
    print_calibration(RealIndex(vectors, references), good, bad)
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
