"""DiffCoRe-Mix inside a Lightning ``training_step``, with paired data whose epoch reaches every worker.

The data module yields pair batches (``PairedDataset`` + ``EpochSampler`` + ``collate_pairs``); the module mixes
each batch with a generator seeded from the step, so a run mixes the same way however it is split or resumed.

    python examples/lightning_module.py --data DATA --synthetic OUT   # partners: accepted generated counterparts
    python examples/lightning_module.py --data DATA                   # partners: other real images of the class

``DATA`` is a class-folder dataset (``diffcoremix sample-data DATA`` writes one); ``OUT`` is a filtered generation
output folder (``diffcoremix augment DATA -o OUT --preset tiny`` makes one offline).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from typing import Any

import lightning as L  # noqa: N812 (the spelling of Lightning's docs)
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from diffcoremix.mix import PARTNER_OWN, EpochSampler, MixOutput, PairedDataset, collate_pairs, make_mixer
from diffcoremix.mix.mixers import KIND_NONE
from diffcoremix.seeds import generator_for


class PairedData(L.LightningDataModule):
    """Each real image with its partner: an own generated counterpart (``synthetic`` given) or a real image."""

    def __init__(
        self, data: str, synthetic: str | None, *, img_size: int, batch_size: int, workers: int, seed: int
    ) -> None:
        super().__init__()
        transform = v2.Compose(
            [
                v2.RandomResizedCrop(img_size, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
            ]
        )
        mode = "counterpart" if synthetic else "real"
        # Built here rather than in setup(): the model needs the number of classes, and listing a folder is cheap.
        self.pairs = PairedDataset(data, synthetic, mode=mode, transform=transform, seed=seed)
        self.sampler = EpochSampler(self.pairs, shuffle=True, seed=seed)
        self.batch_size, self.workers = batch_size, workers

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.pairs,
            batch_size=self.batch_size,
            sampler=self.sampler,
            collate_fn=collate_pairs,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            drop_last=True,
        )


class SetSamplerEpoch(L.Callback):
    """Gives the sampler the epoch, so that each epoch draws new partners, crops and order.

    The hook runs before the epoch's DataLoader iterator is made, so the new epoch is in time; the sampler then
    carries it to the workers inside each index. (Lightning 2.x also calls ``set_epoch`` on the loader's sampler
    just before this hook; saying it here keeps the example correct without relying on that.)
    """

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sampler.set_epoch(pl_module.current_epoch)


class MixClassifier(L.LightningModule):
    """A timm classifier trained on DiffCoRe-Mix batches."""

    def __init__(self, model: str, num_classes: int, *, mix_prob: float, seed: int, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = timm.create_model(model, pretrained=False, num_classes=num_classes)
        self.mixer = make_mixer("diffcoremix", p=mix_prob)
        self.soft_loss, self.hard_loss = SoftTargetCrossEntropy(), nn.CrossEntropyLoss()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        # A generator per step, seeded from (seed, step): the mixing depends on nothing but the step, so a resumed
        # run (global_step restored from the checkpoint) draws the same mixes as an uninterrupted one.
        generator = generator_for(self.hparams.seed, "mix", self.global_step)
        out = self.mixer(**batch, generator=generator)
        images, targets = out
        logits = self.model(images)
        loss = (self.soft_loss if targets.ndim == 2 else self.hard_loss)(logits, targets)
        self.log("train_loss", loss)
        record = step_record(self.global_step + 1, self.current_epoch, loss.item(), batch, out, images)
        return {"loss": loss, "record": record}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.05)


class PrintSteps(L.Callback):
    """One line per step on stdout, and one JSON line per step in ``path`` (``os.devnull`` for none)."""

    def __init__(self, max_steps: int, path: str | None) -> None:
        self.max_steps, self.path, self.last_loss = max_steps, path or os.devnull, math.nan

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.file = open(self.path, "w")  # noqa: SIM115 (closed in on_train_end)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        record = outputs["record"]
        self.last_loss = record["loss"]
        print(
            f"step {record['step']}/{self.max_steps}  epoch {record['epoch']}  loss {record['loss']:.4f}  "
            f"mixed {record['mixed']}/{len(record['lam'])}  own partners {record['own']}",
            flush=True,
        )
        self.file.write(json.dumps(record) + "\n")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.file.close()


def step_record(
    step: int, epoch: int, loss: float, batch: dict[str, torch.Tensor], out: MixOutput, images: torch.Tensor
) -> dict[str, Any]:
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
        "changed": int((images.detach().cpu() != real).flatten(1).any(1).sum()),
        "lam": [round(float(v), 6) for v in out.lam],
        "real": [hashlib.blake2b(image.numpy().tobytes(), digest_size=6).hexdigest() for image in real],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="class-folder dataset of real images")
    parser.add_argument("--synthetic", help="filtered generation output folder; without it, partners are real")
    parser.add_argument("--model", default="resnet10t", help="a timm model name [resnet10t]")
    parser.add_argument("--max-steps", type=int, default=20, help="optimizer steps [20]")
    parser.add_argument("--batch-size", type=int, default=8, help="[8]")
    parser.add_argument("--img-size", type=int, default=64, help="[64]")
    parser.add_argument("--mix-prob", type=float, default=0.5, help="probability that a sample is mixed [0.5]")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers [2]")
    parser.add_argument("--seed", type=int, default=0, help="[0]")
    parser.add_argument("--log", help="also write one JSON line per step to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)  # the model's initial weights
    data = PairedData(
        args.data, args.synthetic, img_size=args.img_size, batch_size=args.batch_size, workers=args.workers,
        seed=args.seed,
    )  # fmt: skip
    if len(data.pairs) < args.batch_size:
        raise SystemExit(f"--batch-size {args.batch_size} is larger than the {len(data.pairs)} images of {args.data}")
    module = MixClassifier(args.model, len(data.pairs.classes), mix_prob=args.mix_prob, seed=args.seed)
    steps = PrintSteps(args.max_steps, args.log)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        # Keep our sampler. On one device Lightning leaves it alone anyway; with several devices (and the default
        # True) it would rebuild the DataLoader around a DistributedSamplerWrapper that reshuffles our order with a
        # seed of its own, and the epoch would reach our sampler only through that wrapper.
        use_distributed_sampler=False,
        callbacks=[SetSamplerEpoch(data.sampler), steps],
    )
    trainer.fit(module, datamodule=data)
    print(f"done: {trainer.global_step} steps, last loss {steps.last_loss:.4f}")


if __name__ == "__main__":
    main()
