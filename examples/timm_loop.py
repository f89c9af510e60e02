"""DiffCoRe-Mix inside a timm-style training loop: what replaces timm's ``mixup_fn``.

timm's ``train.py`` mixes a plain ``(input, target)`` batch with itself (``Mixup``). DiffCoRe-Mix mixes each real
image with its *own partner*, so the data loader yields pairs instead (``PairedDataset`` + ``collate_pairs``), and
the mixer takes the whole pair batch plus an explicit generator. Everything else in the loop stays timm's.

    python examples/timm_loop.py --data DATA --synthetic OUT   # partners: accepted generated counterparts
    python examples/timm_loop.py --data DATA                   # partners: other real images of the class

``DATA`` is a class-folder dataset (``diffcoremix sample-data DATA`` writes one); ``OUT`` is a filtered generation
output folder (``diffcoremix augment DATA -o OUT --preset tiny`` makes one offline).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from diffcoremix.mix import PARTNER_OWN, MixOutput, PairedDataset, collate_pairs, make_mixer
from diffcoremix.mix.mixers import KIND_NONE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="class-folder dataset of real images")
    parser.add_argument("--synthetic", help="filtered generation output folder; without it, partners are real")
    parser.add_argument("--model", default="resnet10t", help="a timm model name [resnet10t]")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps [20]")
    parser.add_argument("--batch-size", type=int, default=8, help="[8]")
    parser.add_argument("--img-size", type=int, default=64, help="[64]")
    parser.add_argument("--mix-prob", type=float, default=0.5, help="probability that a sample is mixed [0.5]")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers [2]")
    parser.add_argument("--seed", type=int, default=0, help="[0]")
    parser.add_argument("--log", help="also write one JSON line per step to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # the model's initial weights
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # Data: each real image with its partner. The transform's random draws are seeded per (seed, epoch, image)
    # inside the dataset, separately for the image and its partner, so any number of workers gives the same batches.
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(args.img_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )
    mode = "counterpart" if args.synthetic else "real"
    pairs = PairedDataset(args.data, args.synthetic, mode=mode, transform=transform, seed=args.seed)
    if len(pairs) < args.batch_size:
        raise SystemExit(f"--batch-size {args.batch_size} is larger than the {len(pairs)} images of {args.data}")
    # A plain DataLoader, not timm's create_loader: its collate (FastCollateMixup with the prefetcher) has no partners.
    # Its shuffling is timm's too (a RandomSampler, here with a seeded generator of its own).
    loader = DataLoader(
        pairs,
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
        collate_fn=collate_pairs,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        drop_last=True,
    )

    model = timm.create_model(args.model, pretrained=False, num_classes=len(pairs.classes)).to(device)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)

    # --- replaces timm's `mixup_fn = Mixup(**mixup_args)` -------------------------------------------------------
    mixer = make_mixer("diffcoremix", p=args.mix_prob)
    generator = torch.Generator().manual_seed(args.seed)  # the mixer's only source of randomness (CPU)
    # ---------------------------------------------------------------------------------------------------------
    # timm picks SoftTargetCrossEntropy when mixup is active; DiffCoRe-Mix keeps hard labels by default (the partner
    # shows the same object), so choose per batch from the targets' shape.
    soft_loss, hard_loss = SoftTargetCrossEntropy(), nn.CrossEntropyLoss()

    model.train()
    step, epoch, loss = 0, 0, torch.tensor(math.nan)
    with open(args.log or os.devnull, "w") as log:
        while step < args.steps:
            # What timm's train.py does when the dataset has the method: new partners and crops every epoch. The
            # epoch is in shared memory, so it reaches the persistent workers' copies of the dataset too.
            pairs.set_epoch(epoch)
            for batch in loader:
                batch = {key: value.to(device) for key, value in batch.items()}
                # --- replaces timm's `input, target = mixup_fn(input, target)` -------------------------------
                out = mixer(**batch, generator=generator)
                images, targets = out
                # ---------------------------------------------------------------------------------------------
                logits = model(images)
                loss = (soft_loss if targets.ndim == 2 else hard_loss)(logits, targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

                step += 1
                record = step_record(step, epoch, loss.item(), batch, out, images)
                print(
                    f"step {step}/{args.steps}  epoch {epoch}  loss {record['loss']:.4f}  "
                    f"mixed {record['mixed']}/{len(images)}  own partners {record['own']}",
                    flush=True,
                )
                log.write(json.dumps(record) + "\n")
                if step == args.steps:
                    break
            epoch += 1
    print(f"done: {step} steps, last loss {loss.item():.4f}")


def step_record(
    step: int, epoch: int, loss: float, batch: dict[str, torch.Tensor], out: MixOutput, images: torch.Tensor
) -> dict:
    """What one step did: how many samples were mixed (``out.kind``), how many partners were own counterparts,
    how many of the images the model saw differ from the real ones, the realised lambdas, and a short digest of
    each real image (a new epoch gives new crops, so the digests change from one epoch to the next)."""
    real = batch["x"].cpu()
    return {
        "step": step,
        "epoch": epoch,
        "loss": loss,
        "mixed": int((out.kind != KIND_NONE).sum()),
        "own": int((batch["partner_rule"] == PARTNER_OWN).sum()),
        "changed": int((images.cpu() != real).flatten(1).any(1).sum()),
        "lam": [round(float(v), 6) for v in out.lam],
        "real": [hashlib.blake2b(image.numpy().tobytes(), digest_size=6).hexdigest() for image in real],
    }


if __name__ == "__main__":
    main()
