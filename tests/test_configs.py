"""Every shipped ``configs/*.yaml`` parses and fits, so that none of them can rot.

Each runs a few short epochs (2 training batches, 1 validation batch): enough for the first
pruning event of every config that prunes something, and for the lottery config's first rewind;
the counts of zeros (entries, or slices for the structured methods) are the schedule's, exactly.
The config's own logger is kept and pointed at ``tmp_path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_prune import PruningCallback
from lightning_prune.cli import build_cli
from lightning_prune.masks import count_for

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
EPOCHS = {"structured_channels": 5}  # its first event (after epoch 2) is at 0%; others: 3
STRUCTURED = ("ln_structured", "random_structured")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:lightning.pytorch.cli")


def test_configs_exist():
    assert len(CONFIGS) >= 5, CONFIGS


def _pruned(weight: torch.Tensor, method: str, dim: int) -> int:
    """Zero entries of ``weight``, or its all-zero slices along ``dim`` for a structured ``method``."""
    if method not in STRUCTURED:
        return int((weight == 0).sum())
    return int((weight.movedim(dim, 0).flatten(1) == 0).all(1).sum())


@pytest.mark.parametrize("config", [pytest.param(c, id=c.stem) for c in CONFIGS])
def test_config_fits(config: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-prune"])
    epochs = EPOCHS.get(config.stem, 3)
    overrides = [
        f"--trainer.max_epochs={epochs}",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    settings = yaml.safe_load(config.read_text())
    logger = settings.get("trainer", {}).get("logger")
    if isinstance(logger, dict) and "save_dir" in logger.get("init_args", {}):
        overrides.append(f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}")

    cli = build_cli(["fit", "--config", str(config), *overrides])

    assert cli.trainer.current_epoch == epochs
    pruning = [c for c in cli.trainer.callbacks if isinstance(c, PruningCallback)]
    assert pruning, f"{config.name} configures no PruningCallback"
    configured = [
        c["init_args"] for c in settings["trainer"]["callbacks"] if c["class_path"].endswith("PruningCallback")
    ]
    for callback, init_args in zip(pruning, configured):
        reached = max(s for e in range(epochs) if (s := callback.schedule.sparsity_at(e)) is not None)
        assert reached > 0, f"{config.name}: no event of the first {epochs} epochs prunes anything"
        dim = init_args.get("dim", 0)
        units = [(_pruned(t.parameter, callback.method_name, dim), t.parameter.shape[dim]) for t in callback.targets]
        if callback.method_name not in STRUCTURED:
            units = [(pruned, t.parameter.numel()) for (pruned, _), t in zip(units, callback.targets)]
        if callback.scope == "global":
            units = [(sum(p for p, _ in units), sum(n for _, n in units))]
        assert units == [(count_for(reached, n), n) for _, n in units]
    if cli.trainer.logger is not None:
        assert Path(cli.trainer.logger.log_dir).is_relative_to(tmp_path)
        assert list(Path(cli.trainer.logger.log_dir).glob("events.out.tfevents.*")) or list(
            Path(cli.trainer.logger.log_dir).glob("*.csv")
        )
