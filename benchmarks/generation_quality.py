"""Generation quality on CIFAR-10: fine-tune the tiny generator, generate, judge, and measure the filter.

1. ``finetune`` the learnable tiny model (``--preset tiny``: its VAE first, then every UNet weight) on
   ``../shared/data/cifar10/train`` (``--per-class`` images per class, 100 by default: all of them).
2. ``generate`` one counterpart per training image with it (the generic pack's prompts: "a photo of a {class}, ...").
3. ``judge`` every generation with the CIFAR-10 ResNet-56 of ``../shared/models``: agreement with the prompt's
   class. The same is done for the untrained tiny model (random weights) as the chance-level reference.
4. For every filter reference rule, with the ResNet-20 of ``../shared/models`` as the filter's embedder (never the
   judge): ``filter --calibrate`` suggests a threshold from the real images alone; then the candidates are
   filtered at it. Reported: the ROC-AUC of the cosine score for telling judge-agreeing generations from the
   others, and the precision (judge-agreeing share of the kept) and recall (kept share of the judge-agreeing) at
   the calibrated threshold. The rule left applied at the end is ``prototype`` (the default).
5. A grid per class of accepted and rejected generations (``--grid``), each with its score.

6. With ``--modes``, the counterpart modes side by side with the same generator and the same 1,000 sources (text,
   img2img at strengths 0.3, 0.5 and 0.7, inpaint with Grad-CAM subject masks of a ResNet-20 trained here, and
   cross-class): the judge's agreement (cross-class: with the dominant label), the misaligned share, the copy share
   (the nearest training image's cosine above 0.95 in the judge's penultimate features, not the filter's; and above
   0.99, since half of the real test images are above 0.95 in these features: the reference row), KID against
   the real test images (in the same features), and the filter's ROC-AUC against the judge per reference rule. Also
   img2img at strength 0.02 against the VAE's own round trip of the source: how close to its source the mode stays.

Everything is resumable (``--work`` keeps the model and the generations); a rerun reuses them.

Run: ``.venv/bin/python benchmarks/generation_quality.py`` (about an hour on two CPU cores; ``--threads 1`` when
other work shares the machine: PyTorch's threads spin and collapse under oversubscription).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO, shared_dir  # benchmarks/common.py


def roc_auc(scores: list[float], positive: list[bool]) -> float | None:
    from sklearn.metrics import roc_auc_score

    if all(positive) or not any(positive):
        return None
    return float(roc_auc_score(positive, scores))


def judged_table(out: Path) -> list[dict[str, Any]]:
    from diffcoremix import read_manifest

    table = read_manifest(out)
    rows = table[table["status"] == "ok"].to_dict("records")
    return [r for r in rows if r.get("agrees") is not None and r["agrees"] == r["agrees"]]  # NaN: not judged


def filter_rule(out: Path, rule: str, embedder: str) -> dict[str, Any]:
    """Calibrate and filter with one reference rule; the ROC-AUC and precision / recall against the judge."""
    from diffcoremix.filter import FilterConfig, filter_run

    calibration = filter_run(out, FilterConfig(embedder=embedder, reference=rule, calibrate=True))
    threshold = calibration.suggested_threshold
    assert threshold is not None
    filter_run(out, FilterConfig(embedder=embedder, reference=rule, threshold=threshold))
    rows = judged_table(out)
    scores = [float(r["score"]) for r in rows]
    agrees = [bool(r["agrees"]) for r in rows]
    kept = [bool(r["accepted"]) for r in rows]
    true_kept = sum(k and a for k, a in zip(kept, agrees, strict=True))
    return {
        "rule": rule,
        "threshold": round(threshold, 4),
        "roc_auc": roc_auc(scores, agrees),
        "kept": sum(kept) / len(kept),
        "precision": true_kept / sum(kept) if any(kept) else None,
        "recall": true_kept / sum(agrees) if any(agrees) else None,
        "judged": len(rows),
    }


def grid(out: Path, path: Path, per_side: int = 6, scale: int = 2) -> None:
    """Per class (rows): ``per_side`` accepted (highest score first) | ``per_side`` rejected (lowest first)."""
    from PIL import Image, ImageDraw

    from diffcoremix import read_manifest

    table = read_manifest(out)
    table = table[table["status"] == "ok"]
    classes = sorted(table["class_name"].unique())
    cell, label_w, gap = 32 * scale, 90, 12
    canvas = Image.new("RGB", (label_w + 2 * per_side * cell + gap, 18 + len(classes) * (cell + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w, 2), "accepted (best first)", fill="black")
    draw.text((label_w + per_side * cell + gap, 2), "rejected (worst first)", fill="black")
    for row, name in enumerate(classes):
        y = 18 + row * (cell + 2)
        draw.text((4, y + cell // 2 - 6), name, fill="black")
        rows = table[table["class_name"] == name]
        accepted = rows[rows["accepted"] == True].sort_values("score", ascending=False)  # noqa: E712
        rejected = rows[rows["accepted"] == False].sort_values("score")  # noqa: E712
        for side, chosen in enumerate((accepted, rejected)):
            for i, record in enumerate(chosen.head(per_side).to_dict("records")):
                with Image.open(out / record["output"]) as image:
                    tile = image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
                x = label_w + side * (per_side * cell + gap) + i * cell
                canvas.paste(tile, (x, y))
                colour = "green" if record.get("agrees") is True else "red"
                draw.rectangle((x, y + cell - 4, x + cell - 1, y + cell - 1), fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(256).save(path, optimize=True)  # a small file to commit


MODES: dict[str, dict[str, Any]] = {
    "text": {},
    "img2img 0.3": {"counterpart": "img2img", "strength": (0.3,)},
    "img2img 0.5": {"counterpart": "img2img", "strength": (0.5,)},
    "img2img 0.7": {"counterpart": "img2img", "strength": (0.7,)},
    "inpaint": {"counterpart": "inpaint"},
    "cross-class": {"counterpart": "cross-class"},
}


class JudgeFeatures:
    """The judge's (CIFAR-10 ResNet-56) globally pooled 64-d features of image files, unit length."""

    def __init__(self, path: Path) -> None:
        from torchvision.transforms import v2

        from diffcoremix.embedders.resnet20 import CIFAR_MEAN, CIFAR_STD, load_cifar_resnet

        self.net = load_cifar_resnet(path).eval()
        import torch

        steps = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Resize((32, 32), antialias=True)]
        self.transform = v2.Compose([*steps, v2.Normalize(CIFAR_MEAN, CIFAR_STD)])

    def __call__(self, files: list[Path]) -> Any:
        import numpy as np
        import torch
        from PIL import Image

        chunks = []
        with torch.inference_mode():
            for i in range(0, len(files), 256):
                batch = torch.stack([self.transform(Image.open(f).convert("RGB")) for f in files[i : i + 256]])
                chunks.append(torch.nn.functional.normalize(self.net.features_of(batch), dim=1).numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 64), dtype=np.float32)


def mode_figures(
    out: Path,
    name: str,
    judge_spec: str,
    embedder: str,
    feats: JudgeFeatures,
    train_feats: Any,
    train_files: list[str],
    test_feats: Any,
) -> dict[str, Any]:
    """One mode's row: judge agreement, misaligned share, copy share, KID, and the filter's ROC-AUC per rule."""
    import numpy as np

    from diffcoremix import read_manifest
    from diffcoremix.filter.config import REFERENCE_RULE_NAMES
    from diffcoremix.judge import judge
    from diffcoremix.report.distances import distance

    result = judge(out, judge_spec)
    table = read_manifest(out)
    ok = table[table["status"] == "ok"].to_dict("records")
    generated = feats([out / r["output"] for r in ok])
    similarity = generated @ train_feats.T
    nearest = similarity.max(axis=1)
    own = [train_files[int(j)] == r["source"] for j, r in zip(similarity.argmax(axis=1), ok, strict=True)]
    kid = distance("all", test_feats, generated)
    rules = [r for r in REFERENCE_RULE_NAMES if r != "prototype"] + ["prototype"]  # prototype stays applied
    filtered = {row["rule"]: row for row in (filter_rule(out, rule, embedder) for rule in rules)}
    row = {
        "mode": name,
        "images": len(ok),
        "failed": int((table["status"] != "ok").sum()),
        "agreement": result.total.rate,
        "misaligned": 1 - (result.total.rate or 0.0),
        "copy_share": float((nearest > 0.95).mean()),
        "copy_share_098": float((nearest > 0.98).mean()),
        "copy_share_099": float((nearest > 0.99).mean()),
        "nearest_is_own_source": float(np.mean(own)),
        "median_nearest": float(np.median(nearest)),
        "kid": kid.kid,
        "kid_std": kid.kid_std,
        "roc_auc": {rule: f["roc_auc"] for rule, f in filtered.items()},
        "prototype": filtered["prototype"],  # its kept share and precision: the rule left applied
    }
    print(f"{name}: agreement {row['agreement']:.1%}, copy share {row['copy_share']:.1%}, KID {row['kid']:.4f}, "
          f"ROC-AUC {row['roc_auc']}", flush=True)  # fmt: skip
    return row


def near_zero_strength(data: Path, work: Path, model: Path, subset: Any) -> dict[str, float]:
    """img2img at strength 0.02 (one of 50 steps) against the VAE's own round trip: mean absolute pixel differences
    from the (fitted) source over 100 sources."""
    import numpy as np
    import torch
    from PIL import Image

    from diffcoremix.data.sources import DataConfig
    from diffcoremix.generate import GenerateConfig, generate, read_manifest
    from diffcoremix.generate.backend import load_pipeline
    from diffcoremix.generate.config import resolve_settings
    from diffcoremix.modes import fit
    from diffcoremix.prompts import PromptsConfig

    config = GenerateConfig(preset="tiny", model=str(model), counterpart="img2img", strength=(0.02,),
                            num_inference_steps=50, batch_size=50)  # fmt: skip
    out = work / "modes" / "img2img 0.02"
    generate(data, out, PromptsConfig(pack="generic", seed=0), config, data_config=DataConfig(max_per_class=10))
    pipe, _ = load_pipeline(resolve_settings(config))
    rows = read_manifest(out).to_dict("records")
    made, round_trip = [], []
    for row in rows:
        source = fit(Image.open(data / row["source"]).convert("RGB"), row["width"], row["height"])
        pixels = np.asarray(source, dtype=np.float64)
        with torch.no_grad():
            x = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
            y = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode()).sample[0].permute(1, 2, 0).clamp(-1, 1)
        round_trip.append(np.abs((y.numpy() + 1) * 127.5 - pixels).mean())
        made.append(np.abs(np.asarray(Image.open(out / row["output"]), dtype=np.float64) - pixels).mean())
    figures = {"img2img_0.02_vs_source": float(np.mean(made)), "vae_round_trip_vs_source": float(np.mean(round_trip))}
    print(f"strength 0.02: {figures}", flush=True)
    return figures


def modes_table(
    data: Path, test: Path, work: Path, model: Path, subset: Any, judge_spec: str, embedder: str, judge_path: Path
) -> dict[str, Any]:
    """Every mode of :data:`MODES` with the fine-tuned generator and the same sources (step 6)."""
    import subprocess

    import numpy as np

    from diffcoremix.data.folder import list_images
    from diffcoremix.generate import GenerateConfig, generate
    from diffcoremix.prompts import PromptsConfig

    classifier = work / "classifier"
    if not (classifier / "model.pt").is_file():  # a ResNet-20 trained here on the same images: its Grad-CAM masks
        command = [sys.executable, "-m", "diffcoremix", "train", str(data), "--config", "cifar", "--max-steps", "400",
                   "--max-per-class", str(subset.max_per_class), "-o", str(classifier)]  # fmt: skip
        # Two torch threads, whatever the caller's: the recorded masks (and the peers' diffcoremix+ set) come from a
        # classifier trained so (one thread gives other weights, other masks and 818 kept images instead of 817).
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    feats = JudgeFeatures(judge_path)
    listing = list_images(data)
    chosen = listing.subset(list(listing.classes), subset.max_per_class).items
    train_feats = feats([i.path for i in chosen])
    test_feats = feats([i.path for i in list_images(test).items])
    reference = (test_feats @ train_feats.T).max(axis=1)  # real test images are no copies: what the cut means
    real = {
        "mode": "real test images (reference)",
        "copy_share": float((reference > 0.95).mean()),
        "copy_share_098": float((reference > 0.98).mean()),
        "copy_share_099": float((reference > 0.99).mean()),
        "median_nearest": float(np.median(reference)),
    }
    rows: list[dict[str, Any]] = [real]
    for name, options in MODES.items():
        out = work / "generated" if name == "text" else work / "modes" / name
        if options.get("counterpart") == "inpaint":
            options = {**options, "mask_from": str(classifier)}
        started = time.perf_counter()
        config = GenerateConfig(preset="tiny", model=str(model), batch_size=50, **options)
        generate(data, out, PromptsConfig(pack="generic", seed=0), config, data_config=subset)
        print(f"{name}: generated in {time.perf_counter() - started:.0f} s", flush=True)
        rows.append(mode_figures(out, name, judge_spec, embedder, feats, train_feats,
                                 [i.relpath for i in chosen], test_feats))  # fmt: skip
    return {"rows": rows, "near_zero": near_zero_strength(data, work, model, subset)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".work" / "generation_quality")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--max-steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--guidance-scale", type=float, default=None, help="null: the fine-tuned model's own")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 when the machine is shared)")
    parser.add_argument("--grid", type=Path, default=REPO / "benchmarks" / "figures" / "generation_quality.png")
    parser.add_argument("--modes", action="store_true", help="also compare the counterpart modes (step 6)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from diffcoremix.data.sources import DataConfig
    from diffcoremix.filter.config import REFERENCE_RULE_NAMES
    from diffcoremix.finetune import FinetuneConfig, finetune
    from diffcoremix.generate import GenerateConfig, generate
    from diffcoremix.judge import judge
    from diffcoremix.prompts import PromptsConfig

    shared = shared_dir()
    data = shared / "data" / "cifar10" / "train"
    judge_spec = f"resnet56:{shared / 'models' / 'resnet56_cifar10.th'}"
    embedder = f"resnet20:{shared / 'models' / 'resnet20_cifar10.th'}"
    subset = DataConfig(max_per_class=args.per_class)
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"per_class": args.per_class, "threads": torch.get_num_threads()}

    # The chance-level reference: the untrained tiny model (random weights), 20 images per class.
    started = time.perf_counter()
    baseline = work / "random-weights"
    generate(data, baseline, PromptsConfig(seed=0), GenerateConfig(preset="tiny", batch_size=20),
             data_config=DataConfig(max_per_class=20))  # fmt: skip
    figures["random_weights_agreement"] = judge(baseline, judge_spec).total.rate
    print(f"random weights: judge agreement {figures['random_weights_agreement']:.1%}", flush=True)

    started = time.perf_counter()
    config = FinetuneConfig(preset="tiny", vae_steps=args.vae_steps, max_steps=args.max_steps,
                            batch_size=args.batch_size, seed=0)  # fmt: skip
    model = finetune(data, work / "generator", config, data_config=subset, progress=sys.stderr.isatty())
    figures["finetune"] = {
        k: model.info[k] for k in ("images", "vae_steps", "steps", "batch_size", "final_loss", "seconds")
    }
    print(f"fine-tuned: {figures['finetune']} ({time.perf_counter() - started:.0f} s this run)", flush=True)

    started = time.perf_counter()
    out = work / "generated"
    summary = generate(
        data, out, PromptsConfig(pack="generic", seed=0),
        GenerateConfig(preset="tiny", model=str(model.model), batch_size=50, guidance_scale=args.guidance_scale),
        data_config=subset, progress=sys.stderr.isatty(),
    )  # fmt: skip
    figures["generate_seconds"] = round(time.perf_counter() - started, 1)
    print(f"generated: {summary} ({figures['generate_seconds']} s)", flush=True)

    result = judge(out, judge_spec)
    figures["agreement"] = result.total.rate
    figures["agreement_by_class"] = {name: a.rate for name, a in result.classes.items()}
    figures["misaligned"] = 1 - (result.total.rate or 0.0)
    print(f"judge (ResNet-56) agreement: {figures['agreement']:.1%}; misaligned {figures['misaligned']:.1%}")
    print("  by class: " + ", ".join(f"{k} {v:.0%}" for k, v in figures["agreement_by_class"].items()), flush=True)

    rules = [r for r in REFERENCE_RULE_NAMES if r != "prototype"] + ["prototype"]  # prototype stays applied
    figures["filter"] = [filter_rule(out, rule, embedder) for rule in rules]
    print(f"{'rule':<10} {'threshold':>9} {'ROC-AUC':>8} {'kept':>6} {'precision':>9} {'recall':>7}")
    for row in figures["filter"]:
        auc = f"{row['roc_auc']:.3f}" if row["roc_auc"] is not None else "n/a"
        print(f"{row['rule']:<10} {row['threshold']:>9.3f} {auc:>8} {row['kept']:>6.1%} "
              f"{row['precision'] or 0:>9.1%} {row['recall'] or 0:>7.1%}")  # fmt: skip
    judge_result = judge(out, judge_spec)  # the by-decision figures of the prototype rule's decisions
    figures["agreement_by_decision"] = {k: v.rate for k, v in judge_result.by_decision.items()}
    grid(out, args.grid)
    print(f"grid: {args.grid}")
    if args.modes:
        figures["modes"] = modes_table(data, shared / "data" / "cifar10" / "test", work, model.model, subset,
                                       judge_spec, embedder, shared / "models" / "resnet56_cifar10.th")  # fmt: skip
    (work / "summary.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
