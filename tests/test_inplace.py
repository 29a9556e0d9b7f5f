"""``masking="in_place"``: plain parameters, masks kept by the callback, zeroed after every step."""

from __future__ import annotations

import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.nn.utils import prune

from lightning_prune import PruningCallback, Rewind
from lightning_prune.schedules import Explicit
from tests.tutorial import LitLeNet, lenet_data

WEIGHTS = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]


class ZerosAfterEveryStep(Callback):
    def __init__(self, callback: PruningCallback) -> None:
        self.callback, self.checked = callback, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        assert not prune.is_pruned(pl_module) and not list(pl_module.buffers())
        held = self.callback._held_masks() or {}
        for name, mask in held.items():
            assert pl_module.get_parameter(name)[~mask].eq(0).all()
            self.checked += 1


def _fit(callback, tmp_path, *, epochs=3, extra=(), ckpt_path=None, model=None):
    torch.manual_seed(0)
    model = model or LitLeNet()
    trainer = Trainer(
        accelerator="cpu",  # compared with CPU references
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in extra),
        default_root_dir=tmp_path,
        callbacks=[callback, *extra],
    )
    trainer.fit(model, lenet_data(), ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("rewind", [pytest.param(None, id="plain"), pytest.param(Rewind(epoch=1), id="rewind")])
def test_same_masks_and_weights_as_reparametrization(tmp_path, rewind) -> None:
    schedule = Explicit({1: 0.4, 2: 0.7})
    results = {}
    for masking in ("reparametrize", "in_place"):
        callback = PruningCallback(scope="global", schedule=schedule, masking=masking, rewind=rewind)
        check = ZerosAfterEveryStep(callback) if masking == "in_place" else Callback()
        model = _fit(callback, tmp_path / masking, extra=[check])
        results[masking] = {n: model.get_parameter(n).detach().clone() for n in WEIGHTS}
        if masking == "in_place":
            assert check.checked > 0
    for name in WEIGHTS:
        assert torch.equal(results["in_place"][name] == 0, results["reparametrize"][name] == 0), name
        torch.testing.assert_close(results["in_place"][name], results["reparametrize"][name], rtol=0, atol=1e-6)
    total = sum(w.numel() for w in results["in_place"].values())
    assert sum(int((w == 0).sum()) for w in results["in_place"].values()) == round(0.7 * total)


def test_checkpoint_is_plain_and_resumes_exactly(tmp_path) -> None:
    schedule = Explicit({0: 0.3, 1: 0.5, 3: 0.8})
    full = _fit(PruningCallback(schedule=schedule, masking="in_place"), tmp_path / "full", epochs=4)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
    _fit(PruningCallback(schedule=schedule, masking="in_place"), tmp_path / "a", epochs=2, extra=[checkpoints])
    path = tmp_path / "ckpt" / "epoch=1-step=8.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    assert not [k for k in checkpoint["state_dict"] if k.endswith(("_orig", "_mask"))]
    plain = LitLeNet.load_from_checkpoint(path)
    assert (plain.fc1.weight == 0).sum() == round(0.5 * 48000)
    resumed = _fit(PruningCallback(schedule=schedule, masking="in_place"), tmp_path / "b", epochs=4, ckpt_path=path)
    for name in WEIGHTS:
        assert torch.equal(resumed.get_parameter(name), full.get_parameter(name)), name


def test_bad_masking() -> None:
    with pytest.raises(ValueError, match="`masking` to be 'reparametrize' or 'in_place', got 'lazy'"):
        PruningCallback(masking="lazy")  # type: ignore[arg-type]
