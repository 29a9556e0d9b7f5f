"""Every shipped ``configs/*.yaml`` parses and fits, so that none of them can rot.

Each runs three short epochs (2 training batches, 1 validation batch): enough for the first
pruning event of every config, and for the lottery config's first rewind. The config's own
logger is kept and pointed at ``tmp_path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from lightning_prune import PruningCallback
from lightning_prune.cli import build_cli

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
EPOCHS = 3

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:lightning.pytorch.cli")


def test_configs_exist():
    assert len(CONFIGS) >= 5, CONFIGS


@pytest.mark.parametrize("config", [pytest.param(c, id=c.stem) for c in CONFIGS])
def test_config_fits(config: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-prune"])
    overrides = [
        f"--trainer.max_epochs={EPOCHS}",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    logger = yaml.safe_load(config.read_text()).get("trainer", {}).get("logger")
    if isinstance(logger, dict) and "save_dir" in logger.get("init_args", {}):
        overrides.append(f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}")

    cli = build_cli(["fit", "--config", str(config), *overrides])

    assert cli.trainer.current_epoch == EPOCHS
    pruning = [c for c in cli.trainer.callbacks if isinstance(c, PruningCallback)]
    assert pruning, f"{config.name} configures no PruningCallback"
    for callback in pruning:
        targets = callback.targets
        zeros = sum(int((t.parameter == 0).sum()) for t in targets)
        fraction = zeros / sum(t.parameter.numel() for t in targets)
        reached = [s for e in range(EPOCHS) if (s := callback.schedule.sparsity_at(e)) is not None]
        # Layer-wise structured pruning rounds per slice, per layer: a few percent at most here.
        assert fraction == pytest.approx(max(reached, default=0.0), abs=0.05)
    if cli.trainer.logger is not None:
        assert Path(cli.trainer.logger.log_dir).is_relative_to(tmp_path)
        assert list(Path(cli.trainer.logger.log_dir).glob("events.out.tfevents.*")) or list(
            Path(cli.trainer.logger.log_dir).glob("*.csv")
        )
