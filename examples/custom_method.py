"""A custom pruning method, as in the PyTorch pruning tutorial, driven by the callback.

The tutorial's ``FooBarPruningMethod`` prunes every other entry of a tensor, or of its remaining
unpruned entries when the tensor is already pruned. Here it prunes the bias of LeNet's last layer
after epoch 0 and again after epoch 1; the mask is printed after each event. Masks are ``bool``
tensors (``False``: pruned).

Example:
    python examples/custom_method.py
    python examples/custom_method.py --limit-batches 2
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from lightning import Callback, LightningModule, Trainer, seed_everything
from torch.nn.utils import prune

from lightning_prune import PruningCallback
from lightning_prune.demo import DigitsDataModule, ImageClassifier
from lightning_prune.schedules import Explicit


# fmt: off
class FooBarPruningMethod(prune.BasePruningMethod):  # the tutorial's class, exactly as users paste it
    """Prune every other entry in a tensor
    """
    PRUNING_TYPE = 'unstructured'

    def compute_mask(self, t, default_mask):
        mask = default_mask.clone()
        mask.view(-1)[::2] = 0
        return mask
# fmt: on


class PrintMask(Callback):
    """Print ``fc3.bias_mask`` at every epoch end (placed after the pruning callback)."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        print(f"after epoch {trainer.current_epoch}: {pl_module.get_buffer('fc3.bias_mask').cpu()}")


def main(argv: Sequence[str] | None = None) -> torch.Tensor:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-batches", type=int, default=None, help="batches per epoch (quick runs)")
    args = parser.parse_args(argv)

    seed_everything(0)
    model = ImageClassifier(model="lenet")
    pruning = PruningCallback(
        method=FooBarPruningMethod,  # in YAML: its import path, e.g. `method: my_package.FooBarPruningMethod`
        targets=["fc3.bias"],
        schedule=Explicit({0: 0.5, 1: 0.75}),  # FooBar decides the zeros; these targets say when to call it
        make_permanent=False,  # keep the reparametrization, to show the mask at the end
    )
    trainer = Trainer(
        max_epochs=2,
        callbacks=[pruning, PrintMask()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
    )
    trainer.fit(model, datamodule=DigitsDataModule(image_size=32))

    mask = model.get_buffer("fc3.bias_mask")
    print(f"prune.is_pruned: {prune.is_pruned(model)}")
    print(f"buffers of fc3: {[name for name, _ in model.get_submodule('fc3').named_buffers()]}")
    print(mask)
    return mask


if __name__ == "__main__":
    main()
