"""The built-in models, the digits data and the classifier."""

from __future__ import annotations

import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import LearningRateFinder, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import PruningCallback, Rewind
from lightning_prune.demo import DigitsDataModule, ImageClassifier, LeNet, LeNet300100, SmallConvNet
from lightning_prune.demo.data import EpochShuffle
from lightning_prune.schedules import Explicit
from tests.helpers import assert_tensors_equal, effective_weights, make_trainer, masks_of


def _quiet_trainer(root, **kwargs) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=root, **kwargs)


def _digits(**kwargs) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.setup()
    return dm


def test_digits_splits_are_disjoint_and_complete() -> None:
    dm = _digits(image_size=8, flatten=True, seed=1)
    parts = dm.split_indices
    sizes = {name: len(index) for name, index in parts.items()}
    assert sizes == {"train": len(dm.train_set), "val": len(dm.val_set), "test": len(dm.test_set)}
    assert sum(sizes.values()) == 1797
    assert sizes["val"] == sizes["test"] == round(0.15 * 1797)
    assert sorted(torch.cat(list(parts.values())).tolist()) == list(range(1797))


def test_digits_split_is_fixed_by_seed() -> None:
    dm = _digits(image_size=8, flatten=True, seed=1)
    again = _digits(image_size=8, flatten=True, seed=1)
    other = _digits(image_size=8, flatten=True, seed=2)
    for name in ("train", "val", "test"):
        assert torch.equal(again.split_indices[name], dm.split_indices[name])
    assert torch.equal(again.test_set.tensors[0], dm.test_set.tensors[0])
    assert not torch.equal(other.split_indices["test"], dm.split_indices["test"])
    first = next(iter(dm.train_dataloader()))[1]
    assert torch.equal(next(iter(again.train_dataloader()))[1], first)


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        pytest.param({"image_size": 32}, (64, 1, 32, 32), id="lenet-images"),
        pytest.param({"image_size": 8}, (64, 1, 8, 8), id="raw-images"),
        pytest.param({"image_size": 8, "flatten": True}, (64, 64), id="flat-8"),
        pytest.param({"image_size": 32, "flatten": True, "batch_size": 16}, (16, 1024), id="flat-32"),
    ],
)
def test_digits_shapes(kwargs, shape) -> None:
    dm = _digits(**kwargs)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        x, y = next(iter(loader))
        assert tuple(x.shape) == shape and y.dtype == torch.int64
    train = dm.train_set.tensors[0]
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1) < 1e-4
    assert dm.num_classes == 10 and set(dm.train_set.tensors[1].tolist()) == set(range(10))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"batch_size": 0}, "`batch_size`.*got 0", id="batch"),
        pytest.param({"image_size": 4}, "`image_size`.*got 4", id="size"),
        pytest.param({"image_size": True}, "`image_size`.*got True", id="size-bool"),
        pytest.param({"flatten": "yes"}, "`flatten`.*got 'yes'", id="flatten"),
        pytest.param({"val_fraction": 1.5}, r"`val_fraction` in \(0, 1\), got 1.5", id="val"),
        pytest.param({"test_fraction": 0}, "`test_fraction`.*got 0", id="test"),
        pytest.param({"val_fraction": 0.5, "test_fraction": 0.5}, "`val_fraction \\+ test_fraction`", id="sum"),
        pytest.param({"seed": 1.5}, "`seed`.*got 1.5", id="seed"),
        pytest.param({"num_workers": -1}, "`num_workers`.*got -1", id="workers"),
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
        pytest.param(LeNet300100(in_features=1024), torch.zeros(2, 1, 32, 32), id="lenet-300-100-32"),
        pytest.param(SmallConvNet(), torch.zeros(2, 1, 32, 32), id="small-convnet-32"),
        pytest.param(SmallConvNet(), torch.zeros(2, 1, 8, 8), id="small-convnet-8"),
    ],
)
def test_models_give_logits(net, x) -> None:
    assert net(x).shape == (2, 10)


def test_lenet_is_the_tutorial_lenet() -> None:
    shapes = {name: tuple(p.shape) for name, p in LeNet().named_parameters() if name.endswith("weight")}
    assert shapes == {
        "conv1.weight": (6, 1, 5, 5),
        "conv2.weight": (16, 6, 5, 5),
        "fc1.weight": (120, 400),
        "fc2.weight": (84, 120),
        "fc3.weight": (10, 84),
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"model": "resnet"}, r"`model` to be one of \['lenet'.*got 'resnet'", id="model"),
        pytest.param({"optimizer": "rmsprop"}, "`optimizer`.*got 'rmsprop'", id="optimizer"),
        pytest.param({"lr": 0.0}, "`lr`.*got 0.0", id="lr"),
        pytest.param({"lr_step_size": -1}, "`lr_step_size`.*got -1", id="step"),
        pytest.param({"lr_gamma": 2.0}, "`lr_gamma`.*got 2.0", id="gamma"),
    ],
)
def test_classifier_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ImageClassifier(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "scheduled"),
    [
        pytest.param({}, False, id="sgd"),
        pytest.param({"optimizer": "adam", "lr": 1e-3, "lr_step_size": 2}, True, id="adam-steplr"),
    ],
)
def test_classifier_optimizers(kwargs, scheduled) -> None:
    config = ImageClassifier(**kwargs).configure_optimizers()
    if not scheduled:
        assert isinstance(config, torch.optim.SGD)
        return
    assert isinstance(config["optimizer"], torch.optim.Adam)
    assert config["lr_scheduler"]["interval"] == "epoch"
    assert config["lr_scheduler"]["scheduler"].step_size == 2


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
        accelerator="cpu",  # compared with CPU references
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
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(trainer.callback_metrics)
    network = {"lenet": LeNet, "lenet_300_100": LeNet300100, "small_convnet": SmallConvNet}[model]
    assert [name for name, _ in module.named_parameters()] == [name for name, _ in network().named_parameters()]
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "x.ckpt")
    assert loaded.hparams.model == model and loaded.hparams.lr_step_size == 1
    state, reloaded = module.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys()
    for name, value in state.items():
        assert torch.equal(value, reloaded[name]), name


@pytest.mark.parametrize(
    ("model", "data", "match"),
    [
        pytest.param(
            "lenet_300_100", {}, r"in_features=64.*32x32.*set `in_features` to 1024 or `image_size` to 8", id="300-100"
        ),
        pytest.param("lenet", {"image_size": 8}, r"takes 32x32 images.*8x8", id="lenet-8"),
        pytest.param("small_convnet", {"image_size": 8, "flatten": True}, r"takes images.*flattened", id="flat"),
    ],
)
def test_classifier_refuses_data_it_cannot_take_before_a_step(tmp_path, model, data, match) -> None:
    finder = LearningRateFinder(num_training_steps=2)  # a tuner's steps come before any module hook of the fit
    trainer = _quiet_trainer(tmp_path, max_epochs=1, callbacks=[finder])
    with pytest.raises(ValueError, match=match):
        trainer.fit(ImageClassifier(model=model), DigitsDataModule(**data))
    assert trainer.global_step == 0


def test_digits_ask_only_the_demo_classifier(tmp_path) -> None:
    """Another module's method of the same name is not the demo's check."""

    class Other(ImageClassifier.__mro__[1]):  # a plain LightningModule
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(64, 10)

        def check_data(self, batch) -> None:
            raise AssertionError("not ours to call")

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = _quiet_trainer(tmp_path, max_steps=1, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(Other(), DigitsDataModule(image_size=8, flatten=True))
    assert trainer.global_step == 1


def test_classifier_leaves_setup_alone() -> None:
    """A module that overrides `setup` has its pruning targets resolved after it, so a bad pattern would
    fail later (after a tuner's search, a checkpoint's loading)."""
    from lightning import LightningModule
    from lightning.pytorch.utilities.model_helpers import is_overridden

    assert not is_overridden("setup", ImageClassifier(), LightningModule)


def test_classifier_tests(tmp_path) -> None:
    trainer = Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=2,
        default_root_dir=tmp_path,
    )
    (metrics,) = trainer.test(ImageClassifier(model="lenet_300_100"), DigitsDataModule(image_size=8), verbose=False)
    assert set(metrics) == {"test/loss", "test/acc"} and 0 <= metrics["test/acc"] <= 1


class _Orders(Callback):
    """The labels of every training batch, by epoch."""

    def __init__(self) -> None:
        self.seen: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.setdefault(trainer.current_epoch, []).append(batch[1].clone())


def test_a_resumed_fit_sees_each_epochs_order_and_ends_with_the_same_masks(tmp_path) -> None:
    """The training order is a function of the seed and the epoch (``EpochShuffle``): a fit resumed
    after epoch 0 shuffles epochs 1 and 2 as the uninterrupted fit did, and prunes the same entries."""

    def fit(ckpt_path=None) -> tuple[ImageClassifier, _Orders]:
        torch.manual_seed(0)
        module, orders = ImageClassifier(model="lenet_300_100"), _Orders()
        callbacks = [orders, PruningCallback(schedule=Explicit({0: 0.5, 2: 0.75}), make_permanent=False)]
        if ckpt_path is None:
            callbacks.append(ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1))
        trainer = Trainer(
            accelerator="cpu",
            max_epochs=3,
            limit_train_batches=4,
            limit_val_batches=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=ckpt_path is None,
            default_root_dir=tmp_path,
            callbacks=callbacks,
        )
        trainer.fit(module, DigitsDataModule(image_size=8, flatten=True), ckpt_path=ckpt_path)
        return module, orders

    uninterrupted, first = fit()
    resumed, second = fit(tmp_path / "epoch=0.ckpt")
    assert not torch.equal(torch.cat(first.seen[0]), torch.cat(first.seen[1])), "epochs are shuffled differently"
    for epoch in (1, 2):
        assert torch.equal(torch.cat(second.seen[epoch]), torch.cat(first.seen[epoch])), epoch
    for (name, mask), (_, again) in zip(masks_of(uninterrupted).items(), masks_of(resumed).items()):
        assert torch.equal(mask, again), name
    assert_tensors_equal(effective_weights(resumed), effective_weights(uninterrupted))


def test_epoch_shuffle_gives_the_orders_of_a_shuffling_loader() -> None:
    """The orders of ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))`` run to each
    epoch's end, which earlier versions used: results measured with those stay reproducible."""
    data = TensorDataset(torch.arange(300))
    loader = DataLoader(data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(3))
    orders = [torch.cat([b[0] for b in loader]).tolist() for _ in range(5)]
    sampler = EpochShuffle(data, seed=3)
    for epoch in (0, 1, 2, 3, 4, 2, 4, 0, 3):  # in turn, then jumping back and forth (resumes)
        sampler.set_epoch(epoch)
        assert list(sampler) == orders[epoch], epoch
    assert len(set(map(tuple, orders))) == 5


def test_a_checkpoint_with_the_layers_under_net_loads_and_resumes(tmp_path) -> None:
    """Earlier versions held the network as `self.net`: their checkpoints' weights load, and a pruned fit with a
    rewind resumes from one (the callback's masks and snapshot name the layers under `net.` too)."""

    def fit(epochs: int, ckpt_path=None) -> tuple[ImageClassifier, Trainer]:
        torch.manual_seed(0)
        module = ImageClassifier(model="lenet_300_100")
        callback = PruningCallback(scope="global", schedule=Explicit({0: 0.3, 1: 0.5}), rewind=Rewind(epoch=0))
        trainer = make_trainer(tmp_path, callbacks=[callback], max_epochs=epochs, limit_val_batches=1)
        trainer.fit(module, DigitsDataModule(image_size=8, flatten=True), ckpt_path=ckpt_path)
        return module, trainer

    module, trainer = fit(1)
    trainer.save_checkpoint(tmp_path / "now.ckpt")
    checkpoint = torch.load(tmp_path / "now.ckpt", weights_only=False)
    checkpoint["state_dict"] = {f"net.{key}": value for key, value in checkpoint["state_dict"].items()}
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("PruningCallback")]
    state["masks"] = {f"net.{key}": value for key, value in state["masks"].items()}
    state["snapshot"]["tensors"] = {f"net.{key}": value for key, value in state["snapshot"]["tensors"].items()}
    torch.save(checkpoint, tmp_path / "earlier.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "earlier.ckpt")
    assert_tensors_equal(loaded.state_dict(), module.state_dict())
    whole, _ = fit(2)
    resumed, _ = fit(2, tmp_path / "earlier.ckpt")
    assert_tensors_equal(resumed.state_dict(), whole.state_dict())
