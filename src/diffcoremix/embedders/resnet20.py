"""The CIFAR ResNets of He et al. 2016 (3 stages of 16/32/64 channels, "option A" shortcuts): ResNet-20, ResNet-56
and any depth 6n + 2.

Written to load the checkpoints in ``../shared/models`` (``resnet20_cifar10.th``, ``resnet56_cifar10.th``; keys
``module.conv1.weight``, ``module.layer{1,2,3}.{0..n-1}.{conv1,bn1,conv2,bn2}.*``, ``module.linear.*``): the number
of blocks per stage is read from the keys. The ``model.pt`` of a ``diffcoremix train --model resnet20`` run loads
too (a ``{"info": ..., "state_dict": ...}`` pickle; :func:`trained_run_info` reads how the run showed it images).
The 64-d globally pooled features are a real image embedding (the
filter's ``resnet20:`` embedder, the filter-quality benchmark); the logits head classifies CIFAR-10 (the judge's
``resnet56:`` classifier).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from diffcoremix.checkpoints import load_torch_file
from diffcoremix.errors import ModelLoadError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
"""CIFAR-10's classes in index order: output ``i`` of the shared checkpoints is ``CIFAR10_CLASSES[i]``."""
CIFAR_MEAN, CIFAR_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
"""The input normalisation the shared checkpoints were trained with (``../shared/models/README.md``)."""

_BLOCK_KEY = re.compile(r"^layer1\.(\d+)\.")


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin if (stride != 1 or cin != cout) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.pad:  # option A: subsample by 2 and zero-pad the new channels, no parameters
            shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        return F.relu(out + shortcut)


def _stage(cin: int, cout: int, stride: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(_Block(cin, cout, stride), *[_Block(cout, cout, 1) for _ in range(blocks - 1)])


class _Features(nn.Module):
    def __init__(self, net: CifarResNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.net.features_of(x)
        return features


class CifarResNet(nn.Module):
    """``(B, 3, 32, 32)`` normalised images -> logits; :meth:`features_of` gives the 64-d pooled features.

    Args:
        blocks: residual blocks per stage (``n``; the depth is ``6 n + 2``).
        num_classes: outputs of the linear head.
    """

    def __init__(self, blocks: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"a CIFAR ResNet needs >= 1 block per stage, got {blocks}")
        self.blocks = blocks
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _stage(16, 16, 1, blocks)
        self.layer2 = _stage(16, 32, 2, blocks)
        self.layer3 = _stage(32, 64, 2, blocks)
        self.linear = nn.Linear(64, num_classes)

    @property
    def depth(self) -> int:
        return 6 * self.blocks + 2

    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.linear(self.features_of(x))
        return logits

    @property
    def features(self) -> nn.Module:
        """A module computing :meth:`features_of` (for :class:`ModuleEmbedder`)."""
        return _Features(self)


class ResNet20(CifarResNet):
    """The CIFAR ResNet-20 (3 blocks per stage)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(3, num_classes)


def blocks_per_stage(state: Mapping[str, torch.Tensor]) -> int:
    """The number of blocks per stage of a CIFAR ResNet state dict (``module.`` prefix stripped): one more than
    the largest ``i`` of its ``layer1.{i}.*`` keys; 0 when it has none."""
    indices = [int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))]
    return max(indices) + 1 if indices else 0


def read_cifar_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a CIFAR ResNet checkpoint (a ``{"state_dict": ...}`` pickle or a bare state dict), its
    ``module.`` prefix stripped.

    Raises:
        ModelLoadError: the file is missing, unreadable, or holds no CIFAR ResNet (no ``layer1.0`` keys).
    """
    path = Path(path)
    checkpoint = _read_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not blocks_per_stage(state):
        raise ModelLoadError(f"{path} is not a CIFAR ResNet checkpoint (no layer1.0.* keys)")
    return state


def _read_checkpoint(path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"CIFAR ResNet checkpoint {path} does not exist")
    return load_torch_file(path)


RUN_MODEL_NAME = "resnet20"
"""The ``--model`` of ``diffcoremix train`` that builds :class:`ResNet20` (the runs whose model.pt loads here)."""
RUN_INFO_KEYS = frozenset({"model", "transform", "img_size", "mean", "std"})
"""The keys of a ``diffcoremix train`` run's ``model.pt`` ``info`` that say which network it holds and how the run
showed it images."""


def trained_run_info(path: str | Path) -> dict[str, Any] | None:
    """The ``info`` of a ``diffcoremix train`` run's ``RUN/model.pt`` (model name, classes, image size, mean, std,
    transform); None for a bare checkpoint such as the shared CIFAR ones, whose inputs are CIFAR's.

    Raises:
        ModelLoadError: the file is missing or unreadable.
    """
    checkpoint = _read_checkpoint(Path(path))
    info = checkpoint.get("info") if isinstance(checkpoint, dict) else None
    return dict(info) if isinstance(info, dict) and info.keys() >= RUN_INFO_KEYS else None


def load_cifar_resnet(path: str | Path, *, depth: int | None = None) -> CifarResNet:
    """The checkpoint's network, in eval mode, its depth read from its keys.

    Args:
        path: the checkpoint.
        depth: the depth the caller expects (20, 56...); None accepts any.

    Raises:
        ModelLoadError: not a CIFAR ResNet checkpoint, another depth than ``depth``, or keys that do not fit.
    """
    state = read_cifar_state(path)
    blocks = blocks_per_stage(state)
    found = 6 * blocks + 2
    if depth is not None and found != depth:
        raise ModelLoadError(f"{path} is a ResNet-{found}, not a ResNet-{depth}: use resnet{found}:{path} or "
                             f"cifar-resnet:{path}")  # fmt: skip
    num_classes = state["linear.weight"].shape[0] if "linear.weight" in state else 10
    model = ResNet20(num_classes) if found == 20 else CifarResNet(blocks, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        reason = " ".join(str(err).split())[:200]
        raise ModelLoadError(f"{path} does not fit a CIFAR ResNet-{found}: {reason}") from None
    return model.eval()


def load_resnet20(path: str | Path) -> ResNet20:
    """The ResNet-20 of a checkpoint, in eval mode (the ``module.`` prefix of its keys stripped).

    Raises:
        ModelLoadError: the checkpoint is not a ResNet-20.
    """
    model = load_cifar_resnet(path, depth=20)
    assert isinstance(model, ResNet20)  # load_cifar_resnet builds a ResNet20 for depth 20
    return model
