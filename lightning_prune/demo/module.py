"""``ImageClassifier``: a LightningModule around the built-in networks, with torchmetrics accuracy."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_prune.callback import _renamed_finetuning_state
from lightning_prune.demo.models import LeNet, LeNet300100, SmallConvNet

__all__ = ["MODELS", "ImageClassifier"]

MODELS = ("lenet", "lenet_300_100", "small_convnet")


class ImageClassifier(LightningModule):
    """Classify images with one of :data:`MODELS`, whose layers are the classifier's own.

    Their names are the network's (``conv1.weight`` ... ``fc3.weight`` for the tutorial's LeNet), so
    ``targets``/``exclude`` patterns name them as for the network itself. Checkpoints of earlier
    versions, which held them under ``net.``, load too. The forward is the network's own, run on this
    module: trace it (``to_torchscript(method="trace")``) or use ``torch.export``; it does not script.

    Args:
        model: ``"lenet"`` (1x32x32 inputs), ``"lenet_300_100"`` (any input, flattened to
            ``in_features``) or ``"small_convnet"``.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.
        optimizer: ``"sgd"`` or ``"adam"``.
        lr_step_size: epochs between LR decays (``StepLR``); 0 keeps the LR constant.
        lr_gamma: LR decay factor.
        num_classes: output classes.
        in_features: input size of ``lenet_300_100``.

    Example:
        >>> import torch
        >>> classifier = ImageClassifier(model="lenet_300_100")
        >>> classifier(torch.zeros(2, 64)).shape, [name for name, _ in classifier.named_parameters()][:2]
        (torch.Size([2, 10]), ['fc1.weight', 'fc1.bias'])
    """

    def __init__(
        self,
        model: str = "lenet",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr_step_size: int = 0,
        lr_gamma: float = 0.5,
        num_classes: int = 10,
        in_features: int = 64,
    ) -> None:
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"Expected `model` to be one of {list(MODELS)}, got {model!r}")
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"Expected `optimizer` to be 'sgd' or 'adam', got {optimizer!r}")
        if not lr > 0:
            raise ValueError(f"Expected `lr` > 0, got {lr!r}")
        if isinstance(lr_step_size, bool) or not isinstance(lr_step_size, int) or lr_step_size < 0:
            raise ValueError(f"Expected `lr_step_size` to be an int >= 0 (0: no scheduler), got {lr_step_size!r}")
        if not 0 < lr_gamma <= 1:
            raise ValueError(f"Expected `lr_gamma` in (0, 1], got {lr_gamma!r}")
        self.save_hyperparameters()
        net: nn.Module
        if model == "lenet":
            net = LeNet(num_classes)
        elif model == "lenet_300_100":
            net = LeNet300100(in_features, num_classes)
        else:
            net = SmallConvNet(num_classes)
        for name, layer in net.named_children():  # held here, under the network's names
            self.add_module(name, layer)
        # the network's forward, for this module: it reads only the layers, which this module holds
        self._network_forward = cast("Callable[[nn.Module, torch.Tensor], torch.Tensor]", type(net).forward)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._network_forward(self, x)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The layers lived under `net.` in earlier versions: their names in the weights, and in the states of
        # the callbacks that name them (the pruning masks and rewind snapshot, BackboneFinetuning's groups).
        # Lightning calls this before it loads the weights and the callbacks' states.
        state = checkpoint.get("state_dict", {})
        earlier = any(key.startswith("net.") for key in state)
        if not earlier or any(key.startswith("net.") for key in self.state_dict()):
            return

        def strip(name: str) -> str:
            return name.removeprefix("net.")

        checkpoint["state_dict"] = {strip(key): value for key, value in state.items()}
        states = checkpoint.get("callbacks", {})
        for key, saved in states.items():
            if not isinstance(saved, dict):
                continue
            if isinstance(saved.get("masks"), dict):
                saved["masks"] = {strip(name): mask for name, mask in saved["masks"].items()}
            if isinstance(saved.get("snapshot"), dict) and isinstance(saved["snapshot"].get("tensors"), dict):
                saved["snapshot"]["tensors"] = {strip(k): v for k, v in saved["snapshot"]["tensors"].items()}
            states[key] = _renamed_finetuning_state(saved, strip)  # as it is, unless BackboneFinetuning's

    def check_data(self, size: int, flatten: bool) -> None:
        """Raise a ``ValueError`` if the network cannot take ``size`` x ``size`` images (flattened or not).

        :class:`~lightning_prune.demo.data.DigitsDataModule` calls it in its ``setup``, which Lightning runs
        before any callback's (a tuner's steps included) and before the module's own.

        Example:
            >>> ImageClassifier(model="lenet_300_100", in_features=64).check_data(8, flatten=True)
            >>> ImageClassifier(model="lenet").check_data(8, flatten=False)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: `model='lenet'` takes 32x32 images, but the data gives 8x8 ...
        """
        hp: Any = self.hparams
        if hp.model == "lenet_300_100" and size * size != hp.in_features:
            side = math.isqrt(hp.in_features)
            other = f" or `image_size` to {side}" if side * side == hp.in_features else ""
            raise ValueError(
                f"`model='lenet_300_100'` takes inputs of `in_features={hp.in_features}` entries, but the data "
                f"gives {size}x{size} images ({size * size} entries, `image_size={size}`): set `in_features` to "
                f"{size * size}{other}"
            )
        if hp.model in ("lenet", "small_convnet") and flatten:
            raise ValueError(f"`model={hp.model!r}` takes images, but the data is flattened (`flatten=True`)")
        if hp.model == "lenet" and size != 32:
            raise ValueError(
                f"`model='lenet'` takes 32x32 images, but the data gives {size}x{size} (`image_size={size}`); "
                f"set `image_size` to 32"
            )

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy: MulticlassAccuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(dim=1)

    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        if hp.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        else:
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if not hp.lr_step_size:
            return opt
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.lr_step_size, gamma=hp.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
