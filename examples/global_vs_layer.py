"""Global against layer-wise L1 pruning of LeNet on the digits, at several final sparsities.

``scope="layer"`` prunes every weight tensor to the same sparsity; ``scope="global"`` ranks all
weights together, so large layers (``fc1``: 48,000 of LeNet's 61,470 weights) give up more and
small ones (``conv1``, ``fc3``) keep more. At high sparsity that difference decides the accuracy.
Every run starts from the same initialisation and sees the same batches; the schedule is
polynomial (Zhu & Gupta, 2017), ending two thirds of the way through training.

Prints a markdown table of test accuracy against sparsity. Writes nothing.

Example:
    python examples/global_vs_layer.py
    python examples/global_vs_layer.py --sparsities 0.9 0.98 --max-epochs 30
    python examples/global_vs_layer.py --quick
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Literal

from lightning import Trainer, seed_everything

from lightning_prune import PruningCallback
from lightning_prune.demo import DigitsDataModule, ImageClassifier
from lightning_prune.schedules import Polynomial

Scope = Literal["global", "layer"]
SCOPES: tuple[Scope, ...] = ("global", "layer")


def run(scope: Scope, sparsity: float, *, max_epochs: int, limit_batches: int | None) -> float:
    """Train LeNet while pruning it to ``sparsity`` with ``scope``; the test accuracy."""
    seed_everything(0)
    model = ImageClassifier(model="lenet", lr=0.05, momentum=0.9)
    data = DigitsDataModule(batch_size=64, image_size=32)
    schedule = Polynomial(final_sparsity=sparsity, start_epoch=0, end_epoch=(2 * (max_epochs - 1)) // 3)
    trainer = Trainer(
        max_epochs=max_epochs,
        callbacks=[PruningCallback(method="l1_unstructured", scope=scope, schedule=schedule)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=limit_batches,
        limit_val_batches=0,
        limit_test_batches=limit_batches,
    )
    trainer.fit(model, datamodule=data)
    return float(trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"])


def main(argv: Sequence[str] | None = None) -> dict[tuple[Scope, float], float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95, 0.98])
    parser.add_argument("--max-epochs", type=int, default=20, help="epochs per run (default: 20)")
    parser.add_argument("--limit-batches", type=int, default=None, help="train/test batches per epoch")
    parser.add_argument("--quick", action="store_true", help="two sparsities, one epoch of two batches")
    args = parser.parse_args(argv)
    if args.quick:
        args.sparsities, args.max_epochs, args.limit_batches = [*args.sparsities[:1], 0.9], 1, 2
    for name in ("lightning.pytorch", "lightning.fabric"):  # keep the output to the table
        logging.getLogger(name).setLevel(logging.WARNING)

    results = {
        (scope, s): run(scope, s, max_epochs=args.max_epochs, limit_batches=args.limit_batches)
        for s in args.sparsities
        for scope in SCOPES
    }
    print("| sparsity | global test acc | layer test acc |")
    print("|---:|---:|---:|")
    for s in args.sparsities:
        print(f"| {s:.2f} | {results['global', s]:.4f} | {results['layer', s]:.4f} |")
    return results


if __name__ == "__main__":
    main()
