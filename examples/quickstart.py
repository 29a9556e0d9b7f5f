"""Quickstart: LeNet on the digits, pruned to 90% sparsity while it trains, then tested.

One callback does the pruning: global L1 magnitude pruning on the polynomial schedule of
Zhu & Gupta (2017). TensorBoard logs (``sparsity/*`` among them) and checkpoints go under
``--root`` (default: the current folder).

Example:
    python examples/quickstart.py
    python examples/quickstart.py --max-epochs 1 --limit-batches 2     # a few seconds
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lightning import Trainer, seed_everything

from lightning_prune import PruningCallback
from lightning_prune.demo import DigitsDataModule, ImageClassifier
from lightning_prune.schedules import Polynomial


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-epochs", type=int, default=12, help="training epochs (default: 12)")
    parser.add_argument("--final-sparsity", type=float, default=0.9, help="sparsity reached (default: 0.9)")
    parser.add_argument("--limit-batches", type=int, default=None, help="batches per epoch and split (quick runs)")
    parser.add_argument("--root", default=".", help="folder for logs and checkpoints (default: .)")
    args = parser.parse_args(argv)

    seed_everything(0)
    model = ImageClassifier(model="lenet", lr=0.05, momentum=0.9)
    data = DigitsDataModule(batch_size=64, image_size=32)
    end_epoch = round(0.7 * (args.max_epochs - 1))  # the last epochs fine-tune at the final sparsity
    pruning = PruningCallback(
        method="l1_unstructured",
        scope="global",
        schedule=Polynomial(final_sparsity=args.final_sparsity, start_epoch=0, end_epoch=end_epoch),
    )
    trainer = Trainer(
        max_epochs=args.max_epochs,
        callbacks=[pruning],
        default_root_dir=args.root,
        enable_progress_bar=False,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        limit_test_batches=args.limit_batches,
    )
    trainer.fit(model, datamodule=data)
    test_acc = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"]

    # After fit the weights are plain parameters again, with zeros where pruned.
    zeros = sum(int((t.parameter == 0).sum()) for t in pruning.targets)
    total = sum(t.parameter.numel() for t in pruning.targets)
    print(f"test accuracy: {test_acc:.4f}")
    print(f"sparsity of the pruned weights: {zeros / total:.4f} ({zeros}/{total} zeros)")
    return {"test_acc": float(test_acc), "sparsity": zeros / total}


if __name__ == "__main__":
    main()
