"""End to end: ``fit`` of LeNet on the digits with global L1 pruning at every epoch.

``PruningCallback(scope="global", schedule=Geometric(rate))`` against Lightning's
``ModelPruning("l1_unstructured", amount=rate, use_global_unstructured=True)``: both prune
``rate`` of what remains after every epoch, so both reach the same sparsity (the callback
both with its default reparametrization and with ``masking="in_place"``). A ``dense`` fit
without any callback is the reference. The three take turns in rounds; the table shows the
median wall time of ``trainer.fit`` per variant, the ratios of the medians, and the median of
the ratios to ``ModelPruning`` taken within each round (runs that shared the machine's state).

    python benchmarks/bench_fit.py
    python benchmarks/bench_fit.py --accelerator gpu
    python benchmarks/bench_fit.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import torch
from lightning import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelPruning
from memory import ExtraPeak, report, run_child

from lightning_prune import PruningCallback
from lightning_prune.demo import DigitsDataModule, ImageClassifier
from lightning_prune.schedules import Geometric

HEADER = "| variant | median s | / dense | / ModelPruning | paired / ModelPruning [range] | final sparsity | test acc |"
VARIANTS = ("dense", "ModelPruning", "PruningCallback", "PruningCallback in_place")


def _callbacks(variant: str, rate: float) -> list[Callback]:
    if variant == "ModelPruning":
        return [
            ModelPruning(
                "l1_unstructured",
                parameter_names=["weight"],
                amount=rate,
                use_global_unstructured=True,
                use_lottery_ticket_hypothesis=False,  # PruningCallback without `rewind` does not reset
            )
        ]
    if variant.startswith("PruningCallback"):
        masking = "in_place" if variant.endswith("in_place") else "reparametrize"
        return [PruningCallback(scope="global", schedule=Geometric(rate=rate), masking=masking)]
    return []


class _CountsEveryEpoch(Callback):
    """Listed last: after every epoch's event, the weights hold exactly ``round(rate * remaining)`` more zeros
    than after the epoch before (a schedule's target is cumulative: a skipped event would be made up later)."""

    def __init__(self, rate: float) -> None:
        self.rate, self.expected = rate, None

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        total, zeros = _zeros(pl_module)
        remaining = total if self.expected is None else total - self.expected
        self.expected = total - remaining + round(self.rate * remaining)
        assert zeros == self.expected, f"epoch {trainer.current_epoch}: {zeros} zeros, expected {self.expected}"


def _zeros(model: Any) -> tuple[int, int]:
    """Entries and zeros of the Linear/Conv weights."""
    weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    return sum(w.numel() for w in weights), sum(int((w == 0).sum()) for w in weights)


def _data() -> DigitsDataModule:
    data = DigitsDataModule(image_size=32)
    data.setup()
    return data


def run(
    variant: str,
    epochs: int,
    rate: float,
    limit: float | int,
    accelerator: str = "cpu",
    data: DigitsDataModule | None = None,
) -> tuple[float, float, float]:
    """One fit; returns (seconds, final sparsity of the Linear/Conv weights, test accuracy)."""
    seed_everything(0, verbose=False)
    model, data = ImageClassifier(model="lenet"), data or _data()
    checker = _CountsEveryEpoch(rate if variant != "dense" else 0.0)
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_train_batches=limit,
        limit_val_batches=0,
        callbacks=[*_callbacks(variant, rate), checker],
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    total, zeros = _zeros(model)
    assert zeros == checker.expected, f"{variant} after fit: {zeros} zeros, expected {checker.expected}"
    sparsity = zeros / total
    accuracy = trainer.test(model, data, verbose=False)[0]["test/acc"]
    return seconds, sparsity, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0.2, help="fraction of what remains pruned per epoch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 epochs of 3 batches, 1 round")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu (default) or gpu")
    parser.add_argument("--peak-only", action="store_true", help="only the peak-memory table (fresh processes)")
    parser.add_argument("--peak-child", metavar="VARIANT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    limit: float | int = 1.0
    if args.quick:
        args.epochs, args.rounds, limit = 2, 1, 3
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.peak_child:  # one fit in this fresh process, after the imports, the data set and a shorter fit
        data = _data()
        run(args.peak_child, 1, args.rate, 2, args.accelerator, data)  # the code a fit runs is paged in
        with ExtraPeak("cuda" if args.accelerator == "gpu" else "cpu") as peak:
            run(args.peak_child, args.epochs, args.rate, limit, args.accelerator, data)
        report({"extra": peak.extra})
        return
    if args.peak_only:
        print_peak_table(args)
        return
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    final: dict[str, tuple[float, float]] = {}
    for variant in VARIANTS:  # warm-up: imports, data, allocator
        run(variant, 1, args.rate, 2, args.accelerator)
    for r in range(args.rounds):
        for variant in VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]:  # rotate who goes first
            seconds, sparsity, accuracy = run(variant, args.epochs, args.rate, limit, args.accelerator)
            times[variant].append(seconds)
            final[variant] = (sparsity, accuracy)
    median = {v: statistics.median(t) for v, t in times.items()}
    print(f"LeNet on 32x32 digits, {args.epochs} epochs, {args.rate:.0%} of what remains pruned after each epoch, ")
    print(
        f"median of {args.rounds} interleaved rounds, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"accelerator {args.accelerator}\n"
    )
    print(HEADER)
    print("|---|---|---|---|---|---|---|")
    for variant in VARIANTS:
        sparsity, accuracy = final[variant]
        paired = [a / b for a, b in zip(times[variant], times["ModelPruning"])]  # same round, side by side
        print(
            f"| {variant} | {median[variant]:.2f} | {median[variant] / median['dense']:.3f} | "
            f"{median[variant] / median['ModelPruning']:.3f} | "
            f"{statistics.median(paired):.3f} [{min(paired):.3f}, {max(paired):.3f}] | "
            f"{sparsity:.4f} | {accuracy:.4f} |"
        )
    print()
    print("/ dense, / ModelPruning: ratios of the medians; paired: median (and range) of the ratio within each round.")
    print()
    print_peak_table(args)


def print_peak_table(args: argparse.Namespace) -> None:
    """Measure the extra peak memory of one fit of every variant, each in a fresh process, and print the table."""
    peaks = {}
    for variant in VARIANTS:
        cmd = ["--peak-child", variant, "--accelerator", args.accelerator, "--epochs", str(args.epochs)]
        cmd += ["--rate", str(args.rate)] + (["--quick"] if args.quick else [])
        peaks[variant] = run_child(__file__, *cmd)
    where = "CUDA allocator peak" if args.accelerator == "gpu" else "peak resident memory"
    print(
        f"Peak memory of one fit (and its test) over the memory in use before it, each in a fresh process after a "
        f"shorter fit ({where}):"
    )
    print()
    print("| variant | extra peak MiB | / ModelPruning |")
    print("|---|---:|---:|")
    base = peaks["ModelPruning"]["extra"]
    for variant in VARIANTS:
        extra = peaks[variant]["extra"]
        if extra is None or base is None:
            print(f"| {variant} | not measurable here | |")
        else:
            print(f"| {variant} | {extra / 2**20:.1f} | {extra / base:.2f} |")


if __name__ == "__main__":
    main()
