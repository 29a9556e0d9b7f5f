"""The built-in models, the digits data and the classifier."""

from __future__ import annotations

import pytest
import torch
from lightning import Trainer

from lightning_prune.demo import DigitsDataModule, ImageClassifier, LeNet, LeNet300100, SmallConvNet


def test_digits_splits_are_disjoint_fixed_and_complete() -> None:
    dm = DigitsDataModule(image_size=8, flatten=True, seed=1)
    dm.setup()
    sets = [dm.train_set, dm.val_set, dm.test_set]
    assert sum(len(s) for s in sets) == 1797
    rows = [{tuple(x.tolist()) for x, _ in s} for s in sets]
    assert not (rows[1] & rows[2]) and len(dm.test_set) == round(0.15 * 1797)
    again = DigitsDataModule(image_size=8, flatten=True, seed=1)
    again.setup()
    assert torch.equal(again.test_set.tensors[0], dm.test_set.tensors[0])
    other = DigitsDataModule(image_size=8, flatten=True, seed=2)
    other.setup()
    assert not torch.equal(other.test_set.tensors[0], dm.test_set.tensors[0])


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        pytest.param({"image_size": 32}, (64, 1, 32, 32), id="lenet-images"),
        pytest.param({"image_size": 8}, (64, 1, 8, 8), id="raw-images"),
        pytest.param({"image_size": 8, "flatten": True}, (64, 64), id="flat"),
    ],
)
def test_digits_shapes(kwargs, shape) -> None:
    dm = DigitsDataModule(**kwargs)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape) == shape and y.dtype == torch.int64
    assert abs(float(dm.train_set.tensors[0].mean())) < 1e-4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"batch_size": 0}, "`batch_size`", id="batch"),
        pytest.param({"image_size": 4}, "`image_size`", id="size"),
        pytest.param({"val_fraction": 1.5}, "`val_fraction`", id="val"),
        pytest.param({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction", id="sum"),
    ],
)
def test_digits_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


@pytest.mark.parametrize(
    ("net", "x"),
    [
        pytest.param(LeNet(), torch.zeros(2, 1, 32, 32), id="lenet"),
        pytest.param(LeNet300100(), torch.zeros(2, 64), id="lenet-300-100"),
        pytest.param(SmallConvNet(), torch.zeros(2, 1, 32, 32), id="small-convnet"),
    ],
)
def test_models_give_logits(net, x) -> None:
    assert net(x).shape == (2, 10)


def test_classifier_bad_model() -> None:
    with pytest.raises(ValueError, match=r"`model` to be one of \['lenet'"):
        ImageClassifier(model="resnet")


@pytest.mark.parametrize(
    ("model", "data"),
    [
        pytest.param("lenet", {"image_size": 32}, id="lenet"),
        pytest.param("lenet_300_100", {"image_size": 8, "flatten": True}, id="lenet-300-100"),
        pytest.param("small_convnet", {"image_size": 8}, id="small-convnet"),
    ],
)
def test_classifier_fits_and_reloads(tmp_path, model, data) -> None:
    module = ImageClassifier(model=model, lr_step_size=1)
    trainer = Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_train_batches=3,
        limit_val_batches=2,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DigitsDataModule(**data))
    assert "val/acc" in trainer.callback_metrics
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "x.ckpt")
    assert loaded.hparams.model == model
    for (name, a), b in zip(module.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
