"""What an event sends to the loggers besides its scalars: histograms of the surviving weights, a bar chart."""

from __future__ import annotations

import math

import pytest
import torch
from lightning import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_prune import PruningCallback, reporting
from lightning_prune.core import Counts, SparsityStats
from lightning_prune.schedules import Explicit
from tests.helpers import make_loader, make_model, make_trainer


class _Diverged(Callback):
    """Makes ``fc1``'s weights NaN at the end of epoch 0, before the pruning callback listed after it prunes."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        with torch.no_grad():
            pl_module.fc1.weight.fill_(math.nan)


def test_a_target_with_no_finite_weight_left_gets_no_histogram(tmp_path) -> None:
    """A diverged run's non-finite weights have no bin: TensorBoard's writer refuses an empty histogram."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    callbacks = [_Diverged(), PruningCallback(schedule=Explicit({0: 0.5}))]
    make_trainer(tmp_path, callbacks=callbacks, max_epochs=1, logger=logger).fit(make_model(), make_loader())
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert [e.value for e in events.Scalars("sparsity/global")] == [pytest.approx((46 + 20) / (91 + 39))]
    assert tags["histograms"] == ["weights/fc2.weight"]
    assert tags["images"] == ["sparsity/per_layer"]


def test_the_bar_chart_stops_widening_and_naming_bars_past_forty_targets() -> None:
    def chart(n: int):
        return reporting._bar_chart(SparsityStats({f"layers.{i}.weight": Counts(i % 5, 10) for i in range(n)}))

    named, many = chart(40), chart(1000)
    assert tuple(many.get_size_inches()) == tuple(named.get_size_inches())
    assert len(named.axes[0].get_xticklabels()) == 40
    assert not any(label.get_text().startswith("layers.") for label in many.axes[0].get_xticklabels())
    assert many.axes[0].get_xlabel().startswith("1000 targets")
