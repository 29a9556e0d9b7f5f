"""Tiny LightningModules, seeded synthetic data and small utilities shared by the checkpoint,
distributed and bad-input tests.

The models are small enough that a whole ``fit`` takes well under a second on one CPU core, and
use SGD with momentum plus an epoch-interval ``StepLR`` so that optimizer and scheduler state
change every epoch (a resume that forgets either is visible in the weights).
"""

from __future__ import annotations

import socket
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from packaging.version import Version
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

IN_FEATURES = 7
HIDDEN = 13  # 13 * 7 = 91 and 3 * 13 = 39 entries: neither a multiple of 8, so bit-packing pads
CLASSES = 3
WEIGHTS = ("fc1.weight", "fc2.weight")


class TinyNet(LightningModule):
    """``fc1 -> relu -> fc2``; ``hidden`` sets the width (a different width is a different model)."""

    def __init__(self, hidden: int = HIDDEN, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.fc1 = nn.Linear(IN_FEATURES, hidden)
        self.fc2 = nn.Linear(hidden, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class TinyNetEval(TinyNet):
    """:class:`TinyNet` with validation, test and predict steps."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x), y))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self(batch[0])


class RenamedNet(TinyNet):
    """:class:`TinyNet` whose first layer is called ``hidden`` instead of ``fc1``."""

    def __init__(self, hidden: int = HIDDEN, lr: float = 0.1) -> None:
        super().__init__(hidden, lr)
        self.hidden = self.fc1
        del self.fc1

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.hidden(x)))


def make_model(seed: int = 0, cls: type[TinyNet] = TinyNet, **kwargs: Any) -> TinyNet:
    torch.manual_seed(seed)
    return cls(**kwargs)


def make_loader(n: int = 48, batch_size: int = 16, seed: int = 0) -> DataLoader:
    """A deterministic classification set (no shuffling)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_FEATURES, generator=g)
    y = ((x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()) % CLASSES
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def make_trainer(root: Path, *, callbacks: list[Callback], max_epochs: int, **kwargs: Any) -> Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": max_epochs,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "limit_train_batches": 3,
        "default_root_dir": root,
        "deterministic": True,
        **kwargs,
    }
    return Trainer(callbacks=callbacks, **options)


def make_lenet_trainer(root: Path, callbacks: list[Callback], *, epochs: int = 3, **kwargs: Any) -> Trainer:
    """:func:`make_trainer` for ``tests.tutorial``'s LeNet: every batch of ``lenet_data`` (4 per epoch),
    checkpointing on when a ``ModelCheckpoint`` is given, kernels not forced deterministic (on CUDA that
    would need ``CUBLAS_WORKSPACE_CONFIG``)."""
    checkpoints = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    return make_trainer(
        root, callbacks=callbacks, max_epochs=epochs, limit_train_batches=1.0, deterministic=False,
        enable_checkpointing=checkpoints, **kwargs,
    )  # fmt: skip


def masks_of(module: nn.Module) -> dict[str, Tensor]:
    """Every ``<name>_mask`` buffer of ``module``, keyed by the plain qualified name."""
    return {n.removesuffix("_mask"): b.detach().clone() for n, b in module.named_buffers() if n.endswith("_mask")}


def effective_weights(module: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer under its plain name, pruned tensors as ``orig * mask``; masks left out."""
    sd = module.state_dict()
    out = {}
    for name, value in sd.items():
        if name.endswith("_mask") and name.removesuffix("_mask") + "_orig" in sd:
            continue
        if name.endswith("_orig") and name.removesuffix("_orig") + "_mask" in sd:
            plain = name.removesuffix("_orig")
            out[plain] = (value * sd[plain + "_mask"]).detach().clone()
        else:
            out[name] = value.detach().clone()
    return out


def snapshot_state(module: nn.Module) -> dict[str, Tensor]:
    """A bit-exact copy of ``module.state_dict()``."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(before: dict[str, Tensor], module: nn.Module) -> None:
    """``module``'s state_dict has the same keys, dtypes and bits as ``before``, and no pruning buffers."""
    after = module.state_dict()
    assert list(after) == list(before)
    assert not [n for n, _ in module.named_buffers() if n.endswith("_mask")]
    for name, value in before.items():
        assert after[name].dtype == value.dtype, name
        assert torch.equal(after[name], value), name


def assert_tensors_equal(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")


def lightning_at_least(release: str) -> bool:
    """Whether the installed Lightning is ``release`` or later (CI runs the suite at the lowest one allowed too)."""
    return Version(version("lightning")) >= Version(release)


def ema_weight_averaging() -> type[Callback]:
    """Lightning's ``EMAWeightAveraging`` (Lightning >= 2.6); skips the calling test on earlier versions."""
    from lightning.pytorch import callbacks

    if not hasattr(callbacks, "EMAWeightAveraging"):
        pytest.skip("EMAWeightAveraging needs Lightning >= 2.6")
    return callbacks.EMAWeightAveraging


def free_port() -> int:
    """A TCP port nothing listens on now, for one process group's rendezvous.

    Lightning writes the first group's port to ``MASTER_PORT`` and every later Trainer in the same
    process reuses it, which can find it still held by the last group's sockets.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
