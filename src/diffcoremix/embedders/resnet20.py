"""ResNet-20 for CIFAR-10 (He et al. 2016, the 3-stage 16/32/64-channel variant with "option A" shortcuts).

Written to load the checkpoint in ``../shared/models/resnet20_cifar10.th`` (keys ``module.conv1.weight``,
``module.layer{1,2,3}.{0,1,2}.{conv1,bn1,conv2,bn2}.*``, ``module.linear.*``). Its 64-d globally pooled features
are a real image embedding, used by tests and the filter-quality benchmark.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


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


class _Features(nn.Module):
    def __init__(self, net: ResNet20) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.net.features_of(x)
        return features


class ResNet20(nn.Module):
    """``(B, 3, 32, 32)`` normalised images -> 10 logits; :meth:`features_of` gives the 64-d pooled features."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(*[_Block(16, 16, 1) for _ in range(3)])
        self.layer2 = nn.Sequential(_Block(16, 32, 2), _Block(32, 32, 1), _Block(32, 32, 1))
        self.layer3 = nn.Sequential(_Block(32, 64, 2), _Block(64, 64, 1), _Block(64, 64, 1))
        self.linear = nn.Linear(64, num_classes)

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


def load_resnet20(path: str | Path) -> ResNet20:
    """The checkpoint's network, in eval mode (the ``module.`` prefix of its keys stripped)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    model = ResNet20()
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval()
