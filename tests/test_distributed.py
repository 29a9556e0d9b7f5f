"""A real DDP run: two CPU processes, gloo, ``ddp_spawn``.

Every rank seeds torch's global RNG differently before the pruning callbacks set up, so a random
method that drew its randomness locally would prune differently on each rank. The ranks write
their masks to files; the parent compares them.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.multiprocessing import ProcessRaisedException

from lightning_prune import PruningCallback
from lightning_prune.schedules import Explicit
from tests.helpers import assert_tensors_equal, effective_weights, free_port, make_loader, masks_of

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
]

IN_FEATURES = 7


@pytest.fixture(autouse=True)
def _own_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_PORT", str(free_port()))


class FourLayers(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN_FEATURES, 16)
        self.fc2 = nn.Linear(16, 12)
        self.fc3 = nn.Linear(12, 10)
        self.fc4 = nn.Linear(10, 3)

    def setup(self, stage: str) -> None:
        torch.manual_seed(2000 + self.trainer.global_rank)  # anything random afterwards differs per rank

    def forward(self, x: Tensor) -> Tensor:
        return self.fc4(torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class RankSeeder(Callback):
    """Placed first: seeds every rank differently before the pruning callbacks' ``setup``."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        torch.manual_seed(1000 + trainer.global_rank)


class MaskDumper(Callback):
    """Writes each rank's masks and effective weights (and a rank-local random draw) to ``out/rank<r>.pt``."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = {"masks": masks_of(pl_module), "effective": effective_weights(pl_module), "draw": torch.rand(4)}
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


class PerturbOneRank(Callback):
    """Placed before the PruningCallback: changes rank 1's weights behind DDP's back."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank == 1:
            with torch.no_grad():
                weight = pl_module.fc1.weight
                weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(77)))


class ExceptionProbe(Callback):
    """On the exception: whether the rank's model holds any pruning buffer."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        torch.save({"masks": masks_of(pl_module), "error": str(exception)}, self.out / f"error{trainer.global_rank}.pt")


class DestroyGroupAtExit(Callback):
    """Destroys each worker's process group when it exits, while Python is still whole.

    Lightning does this for NCCL only. A gloo group left to the interpreter's finalization can
    abort the worker ("terminate called without an active exception", SIGABRT), with or without
    this package: about 1 plain `ddp_spawn` fit in 30 here.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        atexit.register(_destroy_group)


def _destroy_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _ddp_trainer(root: Path, callbacks: list[Callback], epochs: int, strategy: str = "ddp_spawn") -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=epochs,
        limit_train_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=root,
        callbacks=[DestroyGroupAtExit(), *callbacks],
    )


CASES = [
    (["fc1.weight"], "random_unstructured", "layer", Explicit({0: 0.3, 1: 0.6})),
    (["fc2.weight", "fc3.weight"], "random_structured", "global", Explicit({0: 0.25, 1: 0.5})),
    (["fc4.weight"], "l1_unstructured", "layer", Explicit({0: 0.4, 1: 0.7})),
    # a custom method that draws from the global RNG (torch's `rand_like`), which differs per rank here
    (["fc1.bias"], "torch.nn.utils.prune.RandomUnstructured", "layer", Explicit({0: 0.25, 1: 0.5})),
]


def test_ddp_ranks_hold_identical_masks(tmp_path: Path) -> None:
    pruning = [
        PruningCallback(method=method, scope=scope, schedule=schedule, targets=targets, make_permanent=True)
        for targets, method, scope, schedule in CASES
    ]
    torch.manual_seed(0)
    model = FourLayers()
    trainer = _ddp_trainer(tmp_path, [RankSeeder(), *pruning, MaskDumper(tmp_path)], epochs=2)
    trainer.fit(model, make_loader(n=64, batch_size=8))

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert not torch.equal(ranks[0]["draw"], ranks[1]["draw"]), "the ranks' global RNGs were meant to differ"
    masks0, masks1 = ranks[0]["masks"], ranks[1]["masks"]
    assert sorted(masks0) == ["fc1.bias", "fc1.weight", "fc2.weight", "fc3.weight", "fc4.weight"]
    assert sorted(masks1) == sorted(masks0)
    assert_tensors_equal(masks1, masks0)
    assert_tensors_equal(ranks[1]["effective"], ranks[0]["effective"])

    # Each method really pruned, to the schedule's final target.
    assert int((~masks0["fc1.weight"]).sum()) == round(0.6 * 16 * IN_FEATURES)
    assert int((~masks0["fc4.weight"]).sum()) == round(0.7 * 3 * 10)
    assert int((~masks0["fc1.bias"]).sum()) == round(0.5 * 16)
    rows_pruned = [int((~masks0[n].any(dim=1)).sum()) for n in ("fc2.weight", "fc3.weight")]
    assert sum(rows_pruned) == round(0.5 * (12 + 10))
    for name in ("fc2.weight", "fc3.weight"):  # whole rows: a row is either all kept or all pruned
        rows = masks0[name]
        assert bool((rows.all(dim=1) | ~rows.any(dim=1)).all()), name
    # The random masks are not trivially equal to anything rank-independent such as "the first rows".
    assert not torch.equal(masks0["fc1.weight"].reshape(-1)[:20], torch.zeros(20, dtype=torch.bool))

    # The main process's model holds rank 0's plain, pruned weights.
    assert not [n for n, _ in model.named_buffers() if n.endswith("_mask")]
    assert_tensors_equal(effective_weights(model), ranks[0]["effective"])


def test_ddp_ranks_that_disagree_raise(tmp_path: Path) -> None:
    callback = PruningCallback(method="l1_unstructured", schedule=Explicit({0: 0.5}), targets=["fc1.weight"])
    torch.manual_seed(0)
    trainer = _ddp_trainer(tmp_path, [PerturbOneRank(), callback, ExceptionProbe(tmp_path)], epochs=1)
    with pytest.raises((RuntimeError, ProcessRaisedException), match=r"masks differ between ranks.*fc1\.weight"):
        trainer.fit(FourLayers(), make_loader(n=64, batch_size=8))
    # The first rank to fail makes torch.multiprocessing terminate the other, which may not get to write.
    probes = sorted(tmp_path.glob("error*.pt"))
    assert probes
    for path in probes:
        probe = torch.load(path, weights_only=False)
        assert "masks differ between ranks" in probe["error"]
        assert probe["masks"] == {}, "the model was meant to be left unchanged"


def test_ddp_spawn_without_make_permanent_returns_the_trained_masked_weights(tmp_path: Path) -> None:
    """``ddp_spawn`` hands rank 0's ``state_dict()`` back to the main process, whose model is plain."""
    callback = PruningCallback(schedule=Explicit({0: 0.5}), targets=["fc1.weight", "fc2.weight"], make_permanent=False)
    torch.manual_seed(0)
    model = FourLayers()
    initial = effective_weights(model)
    trainer = _ddp_trainer(tmp_path, [callback, MaskDumper(tmp_path)], epochs=1)
    trainer.fit(model, make_loader(n=64, batch_size=8))
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    assert not torch.equal(rank0["effective"]["fc1.weight"], initial["fc1.weight"])
    assert int((rank0["effective"]["fc1.weight"] == 0).sum()) == round(0.5 * 16 * IN_FEATURES)
    assert_tensors_equal(effective_weights(model), rank0["effective"])


class InPlaceDumper(Callback):
    """Writes each rank's in-place masks (kept by the callback) and weights to ``out/inplace<r>.pt``."""

    def __init__(self, out: Path, pruning: PruningCallback) -> None:
        self.out, self.pruning = Path(out), pruning

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        weights = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        torch.save(
            {"masks": self.pruning._held_masks(), "weights": weights}, self.out / f"inplace{trainer.global_rank}.pt"
        )


def test_ddp_in_place_masking_agrees_across_ranks(tmp_path: Path) -> None:
    pruning = PruningCallback(
        method="random_unstructured", scope="global", schedule=Explicit({0: 0.3, 1: 0.6}), masking="in_place"
    )
    torch.manual_seed(0)
    trainer = _ddp_trainer(tmp_path, [RankSeeder(), pruning, InPlaceDumper(tmp_path, pruning)], epochs=2)
    trainer.fit(FourLayers(), make_loader(n=64, batch_size=8))

    ranks = [torch.load(tmp_path / f"inplace{r}.pt", weights_only=False) for r in (0, 1)]
    assert_tensors_equal(ranks[1]["masks"], ranks[0]["masks"])
    assert_tensors_equal(ranks[1]["weights"], ranks[0]["weights"])
    masks = ranks[0]["masks"]
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * total)
    for name, mask in masks.items():
        assert ranks[0]["weights"][name][~mask].eq(0).all()


DDP_SCRIPT = """
import sys
from pathlib import Path

import torch

from lightning_prune import PruningCallback
from lightning_prune.schedules import Explicit
from tests.helpers import make_loader
from tests.test_distributed import FourLayers, MaskDumper, RankSeeder, _ddp_trainer

out = Path(sys.argv[1])
pruning = PruningCallback(method="random_unstructured", schedule=Explicit({0: 0.3, 1: 0.6}), targets=["fc1.weight"])
torch.manual_seed(0)
trainer = _ddp_trainer(out, [RankSeeder(), pruning, MaskDumper(out)], epochs=2, strategy="ddp")
trainer.fit(FourLayers(), make_loader(n=64, batch_size=8))
trainer.save_checkpoint(out / "after_fit.ckpt")
if trainer.global_rank == 0:
    torch.save(pruning.state_dict(), out / "callback_state.pt")
"""


def test_ddp_launched_by_lightning_keeps_the_callback_state_in_the_main_process(tmp_path: Path) -> None:
    """`strategy="ddp"`: the script runs again for rank 1; the process that started it is rank 0 and keeps
    the masks (for a checkpoint or a second `fit` there), equal to rank 1's."""
    script = tmp_path / "fit_ddp.py"
    script.write_text(DDP_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "MASTER_PORT": str(free_port())}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert_tensors_equal(ranks[1]["masks"], ranks[0]["masks"])
    assert int((~ranks[0]["masks"]["fc1.weight"]).sum()) == round(0.6 * 16 * IN_FEATURES)
    state = torch.load(tmp_path / "callback_state.pt", weights_only=False)
    assert sorted(state["masks"]) == ["fc1.weight"]
    checkpoint = torch.load(tmp_path / "after_fit.ckpt", weights_only=False)
    saved = [v for k, v in checkpoint["callbacks"].items() if k.startswith("PruningCallback")]
    assert len(saved) == 1 and sorted(saved[0]["masks"]) == ["fc1.weight"]
