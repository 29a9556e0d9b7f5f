"""Lottery tickets on the 8x8 digits: iterative magnitude pruning with rewinding, against a random re-initialisation.

Each run is one ``Trainer.fit`` with a single :class:`~lightning_prune.PruningCallback`: round ``r``
trains at ``0.8 ** r`` of the weights; at the end of its last epoch, global L1 pruning removes 20% of
the remaining weights of LeNet-300-100 and the network goes back to the start of epoch ``k``
(``--rewind-epoch``) for the next round. Round 0 trains ``T`` epochs (``--epochs-per-round``) from
the initialisation; every later round starts from epoch ``k``'s state and trains the ``T - k``
epochs left, so that each round ends ``T`` epochs of training after the initialisation, as in
Frankle et al. (2020):

- *ticket* (``Rewind(epoch=k, reinit=False)``): the surviving weights, the optimizer state and the
  LR-scheduler state return to their values at the start of epoch ``k`` (``k=0``: the initialisation);
- *control* (``Rewind(epoch=k, reinit=True)``): the same, except that the surviving weights are
  freshly re-sampled (each layer's ``reset_parameters``, under a seed hashed from ``--seeds`` and
  the round). The control prunes its own trained weights each round, so its masks are found by the
  same procedure, not copied from the ticket (Frankle & Carbin's control instead re-samples the
  ticket's own mask at each sparsity, which takes one more fit per sparsity).

For every round, a callback placed before the pruning callback records, at the end of the round's
last epoch (so before the pruning event that ends the round), the fraction of weights remaining
and the accuracy on the test split. Round 0 is the dense network trained for ``T`` epochs; both
arms start from the same initialisation and data order, so their round-0 rows are identical.

Writes ``lottery_results.csv`` (arm, seed, round, remaining, test_acc) and ``lottery_results.png``
into ``--out`` and prints a markdown table.

Example:
    python examples/lottery_ticket.py --out examples/results
    python examples/lottery_ticket.py --quick --out /tmp/lottery
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from lightning import Callback, LightningModule, Trainer, seed_everything
from matplotlib.ticker import FixedLocator, NullLocator

from lightning_prune import PruningCallback, Rewind
from lightning_prune.demo.data import DigitsDataModule
from lightning_prune.demo.module import ImageClassifier
from lightning_prune.schedules import Geometric

RATE = 0.2
ARMS = {"ticket": False, "control": True}  # arm -> Rewind.reinit
OPTIMIZER = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}


class RoundEnd(Callback):
    """At the last epoch of each round, before the pruning event: remaining fraction and test accuracy.

    Place it before the :class:`PruningCallback` in the ``callbacks`` list: callbacks run in that
    order, so it sees the network trained for the round, before pruning and rewinding.
    """

    def __init__(
        self, pruning: PruningCallback, datamodule: DigitsDataModule, first: int, every: int, test_batches: int | None
    ) -> None:
        self.pruning = pruning
        self.datamodule = datamodule
        self.first, self.every = first, every  # the rounds end after epochs first, first + every, ...
        self.test_batches = test_batches
        self.rows: list[tuple[int, float, float]] = []  # (round, remaining, test_acc)
        self.test_images = 0

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch < self.first or (epoch - self.first) % self.every:
            return
        self.rows.append(((epoch - self.first) // self.every, self.remaining(), self.test_accuracy(pl_module)))

    def remaining(self) -> float:
        kept = total = 0
        for target in self.pruning.targets:
            mask = target.mask
            total += target.parameter.numel()
            kept += target.parameter.numel() if mask is None else int(mask.sum())
        return kept / total

    @torch.no_grad()
    def test_accuracy(self, pl_module: LightningModule) -> float:
        was_training = pl_module.training
        pl_module.eval()
        correct = seen = 0
        try:
            for i, (x, y) in enumerate(self.datamodule.test_dataloader()):
                if self.test_batches is not None and i >= self.test_batches:
                    break
                x, y = x.to(pl_module.device), y.to(pl_module.device)
                correct += int((pl_module(x).argmax(dim=1) == y).sum())
                seen += y.numel()
        finally:
            pl_module.train(was_training)
        self.test_images = seen
        return correct / seen


def run(
    arm: str, seed: int, *, rounds: int, epochs_per_round: int, rewind_epoch: int, out: Path, quick: bool
) -> RoundEnd:
    """One ``fit`` of ``rounds`` rounds, each ending ``epochs_per_round`` epochs of training after the
    initialisation; the :class:`RoundEnd` that measured it."""
    seed_everything(seed, workers=True)
    datamodule = DigitsDataModule(batch_size=64, image_size=8, flatten=True, seed=0)  # same split for every seed
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.setup("test")
    model = ImageClassifier(model="lenet_300_100", in_features=64, **OPTIMIZER)
    # round 0 ends after epoch `first`; each later round, rewound to epoch k, ends `every` epochs after the last
    first, every = epochs_per_round - 1, epochs_per_round - rewind_epoch
    last = first + every * (rounds - 1)
    pruning = PruningCallback(
        method="l1_unstructured",
        scope="global",
        # Events at the end of each round's last epoch; none at the very end of the run.
        schedule=Geometric(
            rate=RATE,
            start_epoch=first,
            every_n_epochs=every,
            final_sparsity=round(1 - (1 - RATE) ** (rounds - 1), 12),
        ),
        rewind=Rewind(epoch=rewind_epoch, reinit=ARMS[arm]),
        seed=seed,
        make_permanent=False,
    )
    record = RoundEnd(pruning, datamodule, first, every, test_batches=2 if quick else None)
    trainer = Trainer(
        max_epochs=last + 1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        deterministic=True,
        limit_val_batches=0,  # the measurement is the test accuracy of RoundEnd
        limit_train_batches=3 if quick else None,
        default_root_dir=out,
        callbacks=[record, pruning],  # RoundEnd first: it measures before the event
    )
    trainer.fit(model, datamodule=datamodule)
    assert [r for r, _, _ in record.rows] == list(range(rounds)), "one row per round"
    assert trainer.current_epoch == last + 1
    return record


def write_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arm", "seed", "round", "remaining", "test_acc"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "remaining": f"{row['remaining']:.6f}", "test_acc": f"{row['test_acc']:.6f}"})


def _by_round(rows: Sequence[dict], arm: str) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for row in rows:
        if row["arm"] == arm:
            out.setdefault(row["round"], []).append(row)
    return dict(sorted(out.items()))


def _mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def table(rows: Sequence[dict]) -> str:
    ticket, control = _by_round(rows, "ticket"), _by_round(rows, "control")
    lines = [
        "| round | remaining % | ticket test acc % (mean ± std) | control test acc % (mean ± std) |",
        "|---:|---:|---:|---:|",
    ]
    for r, t_rows in ticket.items():
        c_rows = control.get(r, [])
        remaining = statistics.mean(x["remaining"] for x in t_rows)
        control_acc = _mean_std([x["test_acc"] for x in c_rows]) if c_rows else "-"
        lines.append(f"| {r} | {100 * remaining:.1f} | {_mean_std([x['test_acc'] for x in t_rows])} | {control_acc} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict], path: Path, *, epochs_per_round: int, rewind_epoch: int, test_images: int) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    styles = {
        "ticket": ("tab:blue", "o", f"rewound ticket (k={rewind_epoch})"),
        "control": ("tab:orange", "s", "random re-init control"),
    }
    ticks: set[float] = set()
    for arm, (color, marker, label) in styles.items():
        groups = _by_round(rows, arm)
        if not groups:
            continue
        x = [100 * statistics.mean(r["remaining"] for r in g) for g in groups.values()]
        accs = [[100 * r["test_acc"] for r in g] for g in groups.values()]
        seeds = len(next(iter(groups.values())))
        ax.plot(x, [statistics.mean(a) for a in accs], color=color, marker=marker, label=f"{label}, mean of {seeds}")
        ax.fill_between(x, [min(a) for a in accs], [max(a) for a in accs], color=color, alpha=0.2, linewidth=0)
        ticks.update(x)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:.3g}" for t in sorted(ticks)])
    ax.invert_xaxis()  # sparsity grows to the right
    ax.set_xlabel("weights remaining (%), log scale")
    ax.set_ylabel(f"test accuracy (%) on {test_images} images")
    ax.set_title(f"LeNet-300-100 on 8x8 digits: IMP, {int(RATE * 100)}% per round, {epochs_per_round} epochs per round")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", title="band: min-max over seeds")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=14, help="pruning rounds, round 0 dense (default: 14)")
    parser.add_argument(
        "--epochs-per-round",
        type=int,
        default=20,
        help="T, epochs from the initialisation to each round's end (default: 20)",
    )
    parser.add_argument("--rewind-epoch", type=int, default=0, help="k, the epoch to rewind to (default: 0)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--out", type=Path, default=Path("."), help="output folder (default: .)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 rounds, 1 epoch per round, a few batches")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default: 1; the network is tiny, more only add overhead)"
    )
    parser.add_argument("--verbose", action="store_true", help="show Lightning's messages and each event's table")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.rounds, args.epochs_per_round = args.seeds[:1], 2, 1
    if args.rounds < 1 or args.epochs_per_round < 1:
        parser.error("--rounds and --epochs-per-round must be >= 1")
    if not 0 <= args.rewind_epoch < args.epochs_per_round:
        parser.error(
            f"--rewind-epoch must be in [0, {args.epochs_per_round - 1}]: the first round's event ends epoch "
            f"{args.epochs_per_round - 1}, and the rewind snapshot must exist by then"
        )
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    threads = torch.get_num_threads()
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    torch.set_num_threads(args.threads)
    for logger in loggers:
        logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        rows = []
        for seed in args.seeds:
            for arm in ARMS:
                record = run(
                    arm,
                    seed,
                    rounds=args.rounds,
                    epochs_per_round=args.epochs_per_round,
                    rewind_epoch=args.rewind_epoch,
                    out=args.out,
                    quick=args.quick,
                )
                for r, remaining, acc in record.rows:
                    rows.append({"arm": arm, "seed": seed, "round": r, "remaining": remaining, "test_acc": acc})
    finally:
        torch.set_num_threads(threads)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    write_csv(rows, args.out / "lottery_results.csv")
    plot(
        rows,
        args.out / "lottery_results.png",
        epochs_per_round=args.epochs_per_round,
        rewind_epoch=args.rewind_epoch,
        test_images=record.test_images,
    )
    print(table(rows))
    print(
        f"\n{len(args.seeds)} seed(s) x 2 arms x {args.rounds} rounds x {args.epochs_per_round} epochs "
        f"in {time.perf_counter() - started:.0f} s; wrote {args.out / 'lottery_results.csv'} and "
        f"{args.out / 'lottery_results.png'}"
    )
    return rows


if __name__ == "__main__":
    main()
