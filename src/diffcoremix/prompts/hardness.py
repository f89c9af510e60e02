"""How hard each source image is for a trained classifier: its per-sample loss, which ``--sources hard:F
--rank-by RUN`` ranks the images of each class by (TADA and DisCL spend the generation budget where the
classifier struggles).

The loss of an image is the cross-entropy of the run's final model (``RUN/model.pt``, in eval mode) on the image
shown as the run's evaluation shows it (its eval transform), against the image's class, matched to the run's
classes by folder name. Every process that builds the plan (each ``torchrun`` shard) computes the same numbers:
on the CPU, in the listing's order, in batches of :data:`LOSS_BATCH` fixed by position, whatever the device or
batch size of the generation.

Example:
    >>> losses = source_losses("runs/none", list_images("data/train"))  # doctest: +SKIP
    >>> max(losses, key=losses.get)  # the hardest image  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from diffcoremix.classifiers import MODEL_FILE, load_run, run_labels
from diffcoremix.data.dataset import ClassFolderDataset
from diffcoremix.data.folder import DatasetListing
from diffcoremix.data.transforms import for_run
from diffcoremix.identities import weights_sha256

logger = logging.getLogger(__name__)

LOSS_BATCH = 64
"""Images per forward pass. Fixed, so that a loss does not depend on who computes it (a batch of another size
may round differently)."""


def source_losses(run: str | Path, listing: DatasetListing, *, progress: bool = False) -> dict[str, float]:
    """The cross-entropy of the run's model on each image of ``listing``, against its class, by relative path.

    Args:
        run: a finished ``diffcoremix train`` run folder.
        listing: the images (the planned subset of DATA); their class folders must be classes of the run.
        progress: a progress bar over the batches.

    Raises:
        RunError: ``run`` is not a finished training run. DatasetError: a class of ``listing`` is not one of
            the run's. ImageReadError: an image cannot be decoded.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    trained = load_run(run)
    to_run = run_labels(listing, trained)  # every class is checked before any image is read
    logger.info("ranking %d source image(s) by the loss of the run %s", len(listing.items), run)
    loader = DataLoader(ClassFolderDataset(listing, for_run(trained.info)), batch_size=LOSS_BATCH, shuffle=False)
    losses: list[float] = []
    with torch.inference_mode():
        for images, labels in tqdm(loader, desc="rank sources", unit="batch", disable=not progress):
            logits = trained.model(images).float()
            losses += F.cross_entropy(logits, to_run[labels], reduction="none").tolist()
    return {item.relpath: loss for item, loss in zip(listing.items, losses, strict=True)}


def run_weights_id(run: str | Path) -> str:
    """The SHA-256 of the run's ``model.pt``: names the ranking by the weights, not the folder's path (a retrained
    run is another plan).

    Raises:
        RunError: no ``model.pt``. ModelLoadError: it cannot be read.
    """
    from diffcoremix.classifiers import RunError

    path = Path(run) / MODEL_FILE
    if not path.is_file():
        raise RunError(f"{run} is not a finished training run (no {MODEL_FILE}): run or resume `train` first")
    return weights_sha256(path)
