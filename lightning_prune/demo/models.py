"""Built-in networks: the pruning tutorial's LeNet, LeNet-300-100 and a small conv net."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LeNet", "LeNet300100", "SmallConvNet"]


class LeNet(nn.Module):
    """LeNet (LeCun et al., 1998) exactly as the PyTorch pruning tutorial writes it; 1x32x32 inputs.

    Args:
        num_classes: output logits.

    Example:
        >>> import torch
        >>> LeNet()(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LeNet300100(nn.Module):
    """The fully connected LeNet-300-100 of the lottery-ticket papers; flattens any input.

    Args:
        in_features: size of the flattened input (64 for the 8x8 digits, 1024 for 32x32).
        num_classes: output logits.

    Example:
        >>> import torch
        >>> LeNet300100(in_features=64)(torch.zeros(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """

    def __init__(self, in_features: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class SmallConvNet(nn.Module):
    """Two 3x3 conv blocks with batch norm, global average pooling and a linear classifier.

    Works on any image size (1x8x8 and 1x32x32 digits alike).

    Args:
        num_classes: output logits.
        channels: channels of the first block; the second has twice as many.

    Example:
        >>> import torch
        >>> SmallConvNet()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, channels: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * channels)
        self.fc = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
