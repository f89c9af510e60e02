"""Subject masks from a trained classifier's Grad-CAM (``--mask-from RUN``): the part of each real image that made
the run see the image's own class is its subject, kept by the ``inpaint`` counterpart mode; the rest is redrawn.

For one source image of DATA (its class: its class folder, matched to the run's classes by name, as ``eval`` does):

1. the whole image is resized to the run's square input size and normalised as the run's evaluation did (no centre
   crop: every pixel of the source must get a value);
2. the Grad-CAM map of the image's class at the run's Grad-CAM layer (:func:`~diffcoremix.train.evaluation.cam_target`,
   the layer of ``eval --saliency``), scaled to [0, 1];
3. upsampled (bilinear) to the source's size as decoded;
4. subject = map >= ``threshold`` x its maximum; 255 there, 0 elsewhere.

The maps are computed one image at a time, on the CPU: a mask depends on its image, the run's weights and the
threshold alone, not on which other images share a batch (a batched convolution may round differently) nor on the
device. The run's model is loaded once per source. Its :attr:`~GradCamMasks.identity` names the run by the SHA-256
of its ``model.pt`` (:mod:`diffcoremix.identities`): the masks of a retrained run are another setting.

Example:
    >>> masks = gradcam_masks("runs/none-seed0", "data/train", threshold=0.5)  # doctest: +SKIP
    >>> masks.subject_mask("cat/001.jpg", (640, 480)).size  # doctest: +SKIP
    (640, 480)
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

from diffcoremix.data.images import open_image
from diffcoremix.data.transforms import eval_transform
from diffcoremix.errors import ConfigError, DatasetError, ImageReadError
from diffcoremix.identities import weights_sha256
from diffcoremix.masks import BACKGROUND, SUBJECT, MaskError
from diffcoremix.train.evaluation import cam_target, gradcam_maps
from diffcoremix.train.run import MODEL_FILE, TrainedModel, load_run


class GradCamMasks:
    """The masks of ``--mask-from RUN``: see the module's docstring."""

    def __init__(self, trained: TrainedModel, data: Path, threshold: float, weights: str) -> None:
        self.trained, self.data, self.threshold = trained, data, threshold
        self.identity = f"gradcam:{trained.run.resolve()}@{weights}:{threshold!r}"
        info = trained.info
        self.transform = eval_transform("none", info["img_size"], info["mean"], info["std"])  # the whole image
        self.index = {c: i for i, c in enumerate(trained.classes)}
        side = int(info["img_size"])
        self.target = cam_target(trained.model, torch.zeros(1, 3, side, side))  # SaliencyError: no such layer

    def label(self, source: str) -> int:
        """The run's index of the class of ``source`` (its class folder).

        Raises:
            DatasetError: the run does not know the class.
        """
        folder = PurePosixPath(source).parts[0]
        if folder not in self.index:
            raise DatasetError(_unknown_class(folder, self.data, self.trained))
        return self.index[folder]

    def cam(self, source: str, size: tuple[int, int]) -> np.ndarray:
        """``(height, width)`` float32: the Grad-CAM map of ``source`` for its class, at ``size``, in [0, 1].

        Raises:
            DatasetError: the run does not know its class.
            MaskError: the image cannot be read.
        """
        label = self.label(source)
        try:
            image = open_image(self.data / source)
        except ImageReadError as err:
            raise MaskError(f"no Grad-CAM mask for {source}: {err}") from None
        with torch.inference_mode(False):  # Grad-CAM needs gradients, under a caller's inference mode too
            batch = self.transform(image).unsqueeze(0)
            small = torch.from_numpy(gradcam_maps(self.trained.model, batch, [label], self.target))
        width, height = size
        full = F.interpolate(small[:, None], size=(height, width), mode="bilinear", align_corners=False)
        return full[0, 0].numpy()

    def subject_mask(self, source: str, size: tuple[int, int]) -> Image.Image:
        """See :meth:`diffcoremix.masks.MaskSource.subject_mask`; a map that is 0 everywhere is a MaskError (no
        subject), never a mask that keeps the whole image."""
        cam = self.cam(source, size)
        peak = float(cam.max())
        if peak <= 0:
            raise MaskError(
                f"no Grad-CAM mask for {source}: the run {self.trained.run} sees no evidence of its class "
                f"{self.trained.classes[self.label(source)]!r} anywhere in it (the map is 0 everywhere)"
            )
        subject = cam >= self.threshold * peak
        return Image.fromarray(np.where(subject, SUBJECT, BACKGROUND).astype(np.uint8), mode="L")


def _unknown_class(folder: str, data: Path, trained: TrainedModel) -> str:
    known = ", ".join(trained.classes[:10]) + (", ..." if len(trained.classes) > 10 else "")
    return (
        f"class folder {folder!r} of {data} is not a class of the run {trained.run} (its {len(trained.classes)} "
        f"classes: {known}): Grad-CAM masks explain a class the run knows"
    )


def gradcam_masks(
    run: str | Path, data: str | Path, threshold: float = 0.5, *, classes: Collection[str] = ()
) -> GradCamMasks:
    """The Grad-CAM masks of a finished training run for the images of DATA (see the module's docstring).

    Args:
        run: the run folder (``RUN/model.pt``).
        data: DATA, whose images' relative paths name the sources.
        threshold: the share of each map's maximum from which a pixel is subject, in (0, 1): lower keeps more.
        classes: the class folders in use, checked against the run's classes now rather than at their first image.

    Raises:
        ConfigError: ``threshold`` is not in (0, 1).
        RunError: ``run`` is not a finished training run.
        SaliencyError: the run's model has no Grad-CAM layer.
        DatasetError: a class of ``classes`` is not a class of the run.
    """
    if not 0 < threshold < 1:
        raise ConfigError("mask_threshold", threshold, "in (0, 1), the share of the map's maximum kept as subject")
    with torch.inference_mode(False):  # parameters that can take gradients, whatever the caller's mode
        trained = load_run(run)
    weights = weights_sha256(Path(run) / MODEL_FILE)
    unknown = [c for c in classes if c not in trained.classes]
    if unknown:
        raise DatasetError(_unknown_class(unknown[0], Path(data), trained))
    return GradCamMasks(trained, Path(data), float(threshold), weights)
