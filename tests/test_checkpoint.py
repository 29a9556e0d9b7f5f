"""Checkpoints written while pruned: plain weights, bit-packed masks, exact resume.

Every run is on the CPU with unshuffled data, so an uninterrupted run and a run interrupted by a
checkpoint and resumed in a new model, callback and Trainer must agree bit for bit.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import LearningRateFinder, ModelCheckpoint
from torch.nn.utils import prune

from lightning_prune import PruningCallback, Rewind, serialization
from lightning_prune.schedules import Explicit, Polynomial
from lightning_prune.serialization import unpack_mask
from tests.helpers import (
    WEIGHTS,
    RenamedNet,
    TinyNet,
    TinyNetEval,
    assert_same_state,
    assert_tensors_equal,
    effective_weights,
    make_loader,
    make_model,
    make_trainer,
    masks_of,
    snapshot_state,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
]

EPOCHS = 4
STOP = 2  # the interrupted run stops after this many epochs


class EpochRecorder(Callback):
    """At every training epoch end (place it after the PruningCallback): masks and effective weights."""

    def __init__(self) -> None:
        self.masks: dict[int, dict[str, torch.Tensor]] = {}
        self.effective: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        self.masks[trainer.current_epoch] = masks_of(pl_module)
        self.effective[trainer.current_epoch] = effective_weights(pl_module)


class SaveRecorder(TinyNetEval):
    """At every checkpoint save: its masks and effective weights at that moment, by epoch (the module's
    hook, which Lightning calls for weights-only checkpoints too, unlike callbacks')."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: dict[int, dict[str, torch.Tensor]] = {}
        self.effective: dict[int, dict[str, torch.Tensor]] = {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.masks[self.trainer.current_epoch] = masks_of(self)
        self.effective[self.trainer.current_epoch] = effective_weights(self)


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _state_of(checkpoint: dict[str, Any], callback: PruningCallback) -> dict[str, Any]:
    return checkpoint["callbacks"][callback.state_key]


# ---------------------------------------------------------------- mid-training checkpoints are plain


@pytest.mark.parametrize(
    "with_val",
    [pytest.param(False, id="saved_at_train_epoch_end"), pytest.param(True, id="saved_at_validation_end")],
)
@pytest.mark.parametrize("weights_only", [pytest.param(False, id="full"), pytest.param(True, id="weights_only")])
def test_mid_training_checkpoint_loads_into_plain_class(tmp_path: Path, with_val: bool, weights_only: bool) -> None:
    """Lightning calls no callback's checkpoint hook for a weights-only checkpoint; it is plain all the same."""
    schedule = Explicit({0: 0.3, 1: 0.6, 2: 0.8})
    callback = PruningCallback(schedule=schedule)  # make_permanent=True: only the end of fit is plain
    every = ModelCheckpoint(
        dirpath=tmp_path / "every",
        filename="{epoch}",
        every_n_epochs=1,
        save_top_k=-1,
        save_last=True,
        save_on_train_epoch_end=not with_val,  # Lightning would save at train epoch end even with a val loop
        save_weights_only=weights_only,
    )
    trainer = make_trainer(
        tmp_path,
        callbacks=[callback, every],
        max_epochs=3,
        enable_checkpointing=True,
        limit_val_batches=1 if with_val else 0,
    )
    recorder = make_model(cls=SaveRecorder)
    trainer.fit(recorder, make_loader(), make_loader(seed=1) if with_val else None)

    paths = {e: tmp_path / "every" / f"epoch={e}.ckpt" for e in range(3)}
    paths["last"] = tmp_path / "every" / "last.ckpt"
    for key, path in paths.items():
        assert path.is_file(), key
        epoch = 2 if key == "last" else key
        checkpoint = _load(path)
        assert checkpoint["epoch"] == epoch
        assert not [k for k in checkpoint["state_dict"] if k.endswith(("_orig", "_mask"))], key
        assert list(checkpoint["state_dict"]) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"], "plain order"

        # The masks at save time: after this epoch's event if saved at train epoch end, before it if
        # saved at validation end (which Lightning runs before `on_train_epoch_end`).
        event_epoch = epoch if not with_val else epoch - 1
        expected_masks = recorder.masks[epoch]
        if event_epoch >= 0:
            sparsity = schedule.sparsity_at(event_epoch)
            assert sorted(expected_masks) == list(WEIGHTS)
            for name, mask in expected_masks.items():
                assert int((~mask).sum()) == round(sparsity * mask.numel()), (key, name)
        else:
            assert expected_masks == {}

        loaded = TinyNetEval.load_from_checkpoint(path, strict=True, map_location="cpu")
        assert not [n for n, _ in loaded.named_buffers() if n.endswith("_mask")]
        assert_tensors_equal(effective_weights(loaded), recorder.effective[epoch])
        for name, mask in expected_masks.items():
            assert bool((loaded.get_parameter(name)[~mask] == 0).all()), (key, name)

        if weights_only:
            assert "callbacks" not in checkpoint
            continue
        state = _state_of(checkpoint, callback)
        assert sorted(state["masks"]) == sorted(expected_masks)
        for name, mask in expected_masks.items():
            packed = state["masks"][name]["bits"]
            assert packed.dtype == torch.uint8
            assert packed.numel() == math.ceil(mask.numel() / 8), (key, name)
            assert tuple(state["masks"][name]["shape"]) == tuple(mask.shape)
            assert torch.equal(unpack_mask(packed, state["masks"][name]["shape"]), mask), (key, name)


def test_plain_checkpoint_loads_into_plain_torch_module(tmp_path: Path) -> None:
    """The checkpoint's ``state_dict`` also loads strictly into a plain ``nn.Module`` of the same shape."""
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    trainer = make_trainer(
        tmp_path, callbacks=[PruningCallback(schedule=0.5), ckpt], max_epochs=1, enable_checkpointing=True
    )
    trainer.fit(make_model(), make_loader())
    state_dict = _load(tmp_path / "epoch=0.ckpt")["state_dict"]
    plain = make_model(seed=5)
    plain.load_state_dict(state_dict, strict=True)
    for name in WEIGHTS:
        weight = plain.get_parameter(name)
        assert int((weight == 0).sum()) == round(0.5 * weight.numel())


# ---------------------------------------------------------------- exact resume

METHODS: dict[str, Callable[[], PruningCallback]] = {
    "l1_layer": lambda: PruningCallback(
        method="l1_unstructured", scope="layer", schedule=Explicit({0: 0.3, 1: 0.5, 3: 0.8}), make_permanent=False
    ),
    "l1_global": lambda: PruningCallback(
        method="l1_unstructured",
        scope="global",
        schedule=Polynomial(final_sparsity=0.8, start_epoch=0, end_epoch=3),
        make_permanent=False,
    ),
    "random_seeded": lambda: PruningCallback(
        method="random_unstructured", schedule=Explicit({0: 0.3, 1: 0.5, 3: 0.8}), seed=1234, make_permanent=False
    ),
    "random_seed_from_checkpoint": lambda: PruningCallback(
        method="random_unstructured", scope="global", schedule=Explicit({0: 0.3, 2: 0.5, 3: 0.8}), make_permanent=False
    ),
    "l1_rewind": lambda: PruningCallback(
        method="l1_unstructured",
        scope="global",
        schedule=Explicit({1: 0.3, 2: 0.5, 3: 0.8}),
        rewind=Rewind(epoch=1),
        make_permanent=False,
    ),
}


class _SaverBeforePruning(Callback):
    """Saves ``epoch={epoch}.ckpt`` at the end of each training epoch (or validation): placed before the
    PruningCallback, before its event. Not a ``ModelCheckpoint``, which Lightning moves after every other
    callback."""

    def __init__(self, directory: Path, at_validation: bool) -> None:
        self.directory, self.at_validation = directory, at_validation

    def _save(self, trainer: Trainer) -> None:
        trainer.save_checkpoint(self.directory / f"epoch={trainer.current_epoch}.ckpt")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if not self.at_validation:
            self._save(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: Any) -> None:
        if self.at_validation and not trainer.sanity_checking:
            self._save(trainer)


def _run(
    root: Path,
    callback: PruningCallback,
    *,
    epochs: int,
    with_val: bool,
    model_seed: int = 0,
    checkpoint: Callback | None = None,
    checkpoint_first: bool = False,
    ckpt_path: Path | None = None,
) -> tuple[TinyNet, EpochRecorder]:
    model = make_model(seed=model_seed, cls=TinyNetEval)
    recorder = EpochRecorder()
    callbacks: list[Callback] = [callback, recorder]
    if checkpoint is not None:
        callbacks = [checkpoint, *callbacks] if checkpoint_first else [*callbacks, checkpoint]
    trainer = make_trainer(
        root,
        callbacks=callbacks,
        max_epochs=epochs,
        enable_checkpointing=isinstance(checkpoint, ModelCheckpoint),
        limit_val_batches=1 if with_val else 0,
    )
    if checkpoint_first:
        assert [type(c) for c in trainer.callbacks[:2]] == [_SaverBeforePruning, PruningCallback]
    trainer.fit(model, make_loader(), make_loader(seed=1) if with_val else None, ckpt_path=ckpt_path)
    return model, recorder


_REFERENCE: dict[tuple[str, bool], tuple[dict, dict, EpochRecorder]] = {}


def _reference(tmp_path_factory: pytest.TempPathFactory, method: str, with_val: bool):
    """The uninterrupted run (shared by the two checkpoint placements)."""
    key = (method, with_val)
    if key not in _REFERENCE:
        model, recorder = _run(
            tmp_path_factory.mktemp("reference"), METHODS[method](), epochs=EPOCHS, with_val=with_val
        )
        _REFERENCE[key] = (masks_of(model), effective_weights(model), recorder)
    return _REFERENCE[key]


@pytest.mark.parametrize("method", [pytest.param(m, id=m) for m in METHODS])
@pytest.mark.parametrize(
    "with_val",
    [pytest.param(False, id="saved_at_train_epoch_end"), pytest.param(True, id="saved_at_validation_end")],
)
@pytest.mark.parametrize(
    "checkpoint_first",
    [pytest.param(True, id="checkpoint_before_pruning"), pytest.param(False, id="checkpoint_after_pruning")],
)
def test_resume_ends_with_the_masks_of_an_uninterrupted_run(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, method: str, with_val: bool, checkpoint_first: bool
) -> None:
    masks_a, effective_a, recorder_a = _reference(tmp_path_factory, method, with_val)
    assert sorted(masks_a) == list(WEIGHTS)

    def checkpoint() -> Callback:
        if checkpoint_first:
            return _SaverBeforePruning(tmp_path / "ckpt", at_validation=with_val)
        return ModelCheckpoint(
            dirpath=tmp_path / "ckpt",
            filename="{epoch}",
            every_n_epochs=1,
            save_top_k=-1,
            save_on_train_epoch_end=not with_val,  # with a val loop: save at validation end, before the event
        )

    _run(
        tmp_path,
        METHODS[method](),
        epochs=STOP,
        with_val=with_val,
        checkpoint=checkpoint(),
        checkpoint_first=checkpoint_first,
    )
    path = tmp_path / "ckpt" / f"epoch={STOP - 1}.ckpt"
    assert path.is_file()

    resumed_callback = METHODS[method]()
    model_b, recorder_b = _run(
        tmp_path,
        resumed_callback,
        epochs=EPOCHS,
        with_val=with_val,
        model_seed=99,  # the weights must come from the checkpoint, not from the seed
        checkpoint=checkpoint(),
        checkpoint_first=checkpoint_first,
        ckpt_path=path,
    )
    # Resuming from a checkpoint written at validation end, Lightning re-enters the end of epoch STOP - 1.
    assert set(range(STOP, EPOCHS)) <= set(recorder_b.masks) <= set(range(STOP - 1, EPOCHS))
    for epoch in recorder_b.masks:
        assert_tensors_equal(recorder_b.masks[epoch], recorder_a.masks[epoch])
        assert_tensors_equal(recorder_b.effective[epoch], recorder_a.effective[epoch])
    assert_tensors_equal(masks_of(model_b), masks_a)
    assert_tensors_equal(effective_weights(model_b), effective_a)


# ---------------------------------------------------------------- resuming a different model


def _two_epoch_checkpoint(tmp_path: Path, callback: PruningCallback) -> Path:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    make_trainer(tmp_path, callbacks=[callback, ckpt], max_epochs=2, enable_checkpointing=True).fit(
        make_model(), make_loader()
    )
    return tmp_path / "ckpt" / "epoch=1.ckpt"


class _Lenient(RenamedNet):
    strict_loading = False


@pytest.mark.parametrize(
    ("make", "callback_kwargs", "names"),
    [
        pytest.param(lambda: make_model(hidden=11), {}, ["fc1.weight", "fc2.weight"], id="wider_layer"),
        pytest.param(lambda: make_model(cls=RenamedNet), {}, ["hidden.weight"], id="renamed_layer_strict"),
        pytest.param(lambda: make_model(cls=_Lenient), {}, ["fc1.weight", "hidden.weight"], id="renamed_layer_lenient"),
        pytest.param(make_model, {"exclude": ["fc2.weight"]}, ["fc2.weight"], id="target_excluded_on_resume"),
    ],
)
def test_resume_into_changed_targets_names_them(tmp_path: Path, make, callback_kwargs, names) -> None:
    path = _two_epoch_checkpoint(tmp_path, PruningCallback(schedule=Explicit({0: 0.3, 1: 0.5}), make_permanent=False))
    model = make()
    trainer = make_trainer(
        tmp_path, callbacks=[PruningCallback(schedule=Explicit({0: 0.3, 1: 0.5}), **callback_kwargs)], max_epochs=3
    )
    with pytest.raises((RuntimeError, ValueError)) as info:
        trainer.fit(model, make_loader(), ckpt_path=path)
    for name in names:
        assert name in str(info.value), (name, str(info.value))


# ---------------------------------------------------------------- evaluation never prunes


def _evaluate(trainer: Trainer, model: TinyNet, stage: str) -> None:
    loader = make_loader(seed=2)
    if stage == "validate":
        trainer.validate(model, loader)
    elif stage == "test":
        trainer.test(model, loader)
    else:
        trainer.predict(model, loader)


STAGES = [pytest.param(s, id=s) for s in ("validate", "test", "predict")]


@pytest.mark.parametrize("stage", STAGES)
def test_evaluation_with_the_callback_never_prunes(tmp_path: Path, stage: str) -> None:
    model = make_model(cls=TinyNetEval)
    before = snapshot_state(model)
    callback = PruningCallback(schedule=Explicit({0: 0.5, 1: 0.9}))
    trainer = make_trainer(tmp_path, callbacks=[callback], max_epochs=2)
    _evaluate(trainer, model, stage)
    assert_same_state(before, model)
    assert callback.targets == []
    assert callback.state_dict()["masks"] == {}


@pytest.mark.parametrize("stage", STAGES)
def test_evaluation_after_fit_keeps_the_masks(tmp_path: Path, stage: str) -> None:
    model = make_model(cls=TinyNetEval)
    callback = PruningCallback(schedule=Explicit({0: 0.5}), make_permanent=False)
    trainer = make_trainer(tmp_path, callbacks=[callback], max_epochs=1)
    trainer.fit(model, make_loader())
    masks, state = masks_of(model), snapshot_state(model)
    _evaluate(trainer, model, stage)
    assert_tensors_equal(masks_of(model), masks)
    assert_tensors_equal(snapshot_state(model), state)


@pytest.mark.parametrize("variant", ["full", "weights-only", "copied-trainer", "new-trainer"])
@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
@pytest.mark.parametrize("stage", STAGES)
def test_evaluation_of_an_earlier_checkpoint_uses_its_weights(
    tmp_path: Path, stage: str, masking: str, variant: str
) -> None:
    """After a fit that kept the reparametrization, ``ckpt_path=`` an earlier checkpoint evaluates exactly
    its weights: the model's later masks must not hide entries of them, and the callback then holds the
    checkpoint's masks. A weights-only checkpoint has no masks to set back: the zeros of its weights that the
    fit pruned are its masks; a copied Trainer's callbacks are copies; a new Trainer gets the same callback."""
    model = make_model(cls=TinyNetEval)
    callback = PruningCallback(schedule=Explicit({0: 0.3, 1: 0.9}), make_permanent=False, masking=masking)
    ckpt = ModelCheckpoint(
        dirpath=tmp_path,
        filename="{epoch}",
        every_n_epochs=1,
        save_top_k=-1,
        save_weights_only=variant == "weights-only",
    )
    trainer = make_trainer(tmp_path, callbacks=[callback, ckpt], max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, make_loader())
    if variant == "copied-trainer":
        trainer = copy.deepcopy(trainer)
        model, callback = trainer.lightning_module, next(c for c in trainer.callbacks if isinstance(c, PruningCallback))
    if variant == "new-trainer":
        trainer = make_trainer(tmp_path, callbacks=[callback], max_epochs=2)
    loader = make_loader(seed=2)
    run = {"validate": trainer.validate, "test": trainer.test, "predict": trainer.predict}[stage]
    earlier = tmp_path / "epoch=0.ckpt"
    run(model, loader, ckpt_path=earlier)
    saved = _load(earlier)["state_dict"]
    assert_tensors_equal(effective_weights(model), {k: v for k, v in saved.items() if k in effective_weights(model)})
    # the callback holds the masks that go with those weights: a checkpoint saved now pairs them
    if variant == "weights-only":
        masks = {name: saved[name] != 0 for name in WEIGHTS}
        assert [int((~m).sum()) for m in masks.values()] == [round(0.3 * m.numel()) for m in masks.values()]
    else:
        state = _state_of(_load(earlier), callback)
        masks = {name: unpack_mask(m["bits"], m["shape"]) for name, m in state["masks"].items()}
    assert_tensors_equal(dict(zip(WEIGHTS, callback._current_masks())), masks)
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    after = _load(tmp_path / "after.ckpt")
    for name, mask in _state_of(after, callback)["masks"].items():
        assert_tensors_equal({name: after["state_dict"][name] != 0}, {name: unpack_mask(mask["bits"], mask["shape"])})
    # and the last one sets the last masks back, held by the callback and the model alike
    run(model, loader, ckpt_path=tmp_path / "epoch=1.ckpt")
    assert [round(1 - float(m.float().mean()), 2) for m in callback._current_masks()] == [0.9, 0.9]
    if masking == "reparametrize":
        assert [round(1 - float(m.float().mean()), 2) for m in masks_of(model).values()] == [0.9, 0.9]


def _fitted_twice_pruned(tmp_path: Path, masking: str = "reparametrize") -> tuple[TinyNet, Trainer, dict[str, Any]]:
    """A model still masked after a fit (sparsity 0.9), its Trainer, and its epoch-0 checkpoint (0.3)."""
    model = make_model(cls=TinyNetEval)
    callback = PruningCallback(schedule=Explicit({0: 0.3, 1: 0.9}), make_permanent=False, masking=masking)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    trainer = make_trainer(tmp_path, callbacks=[callback, ckpt], max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, make_loader())
    return model, trainer, _load(tmp_path / "epoch=0.ckpt")


@pytest.mark.parametrize("stage", STAGES)
def test_evaluation_of_a_reparametrized_checkpoint_keeps_its_masks(tmp_path: Path, stage: str) -> None:
    """A checkpoint holding ``<name>_orig`` and ``<name>_mask`` (a pruned model saved by a Trainer without
    this callback) evaluates under the masks it holds, not under all-``True`` ones."""
    model, trainer, checkpoint = _fitted_twice_pruned(tmp_path)
    earlier = make_model(cls=TinyNetEval, seed=3)
    prune.l1_unstructured(earlier.fc1, "weight", amount=0.3)
    prune.random_unstructured(earlier.fc2, "weight", amount=0.5)
    del checkpoint["callbacks"]
    checkpoint["state_dict"] = earlier.state_dict()
    torch.save(checkpoint, tmp_path / "reparametrized.ckpt")
    _evaluate_checkpoint(trainer, model, stage, tmp_path / "reparametrized.ckpt")
    assert_tensors_equal(masks_of(model), {k: v.bool() for k, v in masks_of(earlier).items()})
    assert_tensors_equal(effective_weights(model), effective_weights(earlier))


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_a_failed_evaluation_load_keeps_the_masks(tmp_path: Path, masking: str) -> None:
    """torch copies every matching tensor before it raises on a missing one: the masks stay, and hide
    the pruned entries of what was copied."""
    model, trainer, checkpoint = _fitted_twice_pruned(tmp_path, masking)
    callback = next(c for c in trainer.callbacks if isinstance(c, PruningCallback))
    masks = dict(zip(WEIGHTS, callback._current_masks()))
    del checkpoint["state_dict"]["fc2.bias"]
    torch.save(checkpoint, tmp_path / "broken.ckpt")
    with pytest.raises(RuntimeError, match="fc2.bias"):
        _evaluate_checkpoint(trainer, model, "validate", tmp_path / "broken.ckpt")
    assert_tensors_equal(dict(zip(WEIGHTS, callback._current_masks())), masks)
    assert [round(1 - float(m.float().mean()), 1) for m in masks.values()] == [0.9, 0.9]
    weights = effective_weights(model)
    for name, mask in masks.items():
        assert not weights[name][~mask].any(), name


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_a_target_missing_from_an_evaluated_checkpoint_keeps_its_weight_and_mask(tmp_path: Path, masking: str) -> None:
    """Loaded with ``strict=False`` (a checkpoint of the trainable parameters only): the target whose weight the
    checkpoint lacks computes what it did, with its mask; the others take the checkpoint's."""
    model, trainer, checkpoint = _fitted_twice_pruned(tmp_path, masking)
    callback = next(c for c in trainer.callbacks if isinstance(c, PruningCallback))
    before, masks = effective_weights(model)["fc2.weight"], callback._current_masks()
    del checkpoint["state_dict"]["fc2.weight"]
    torch.save(checkpoint, tmp_path / "partial.ckpt")
    model.strict_loading = False
    _evaluate_checkpoint(trainer, model, "validate", tmp_path / "partial.ckpt")
    assert torch.equal(effective_weights(model)["fc2.weight"], before)
    assert torch.equal(callback._current_masks()[1], masks[1])
    saved_mask = _state_of(checkpoint, callback)["masks"]["fc1.weight"]
    saved = unpack_mask(saved_mask["bits"], saved_mask["shape"])
    assert torch.equal(callback._current_masks()[0], saved)
    assert torch.equal(effective_weights(model)["fc1.weight"], checkpoint["state_dict"]["fc1.weight"])
    # what the callback saves now, and what the next fit starts from, are the masks the model holds
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    after = _state_of(_load(tmp_path / "after.ckpt"), callback)["masks"]
    held = dict(zip(WEIGHTS, callback._current_masks()))
    assert_tensors_equal({n: unpack_mask(m["bits"], m["shape"]) for n, m in after.items()}, held)


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_weights_only_checkpoints_of_the_last_fit_after_evaluating_other_models(tmp_path: Path, masking: str) -> None:
    """A dense model evaluated first, or another model fitted since: a weights-only checkpoint of the pruned
    model still gets masks that prune what was pruned when it was written (its zeros)."""
    model = make_model(cls=TinyNetEval)
    callback = PruningCallback(schedule=Explicit({0: 0.3, 1: 0.6}), make_permanent=False, masking=masking)
    ckpt = ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", every_n_epochs=1, save_top_k=-1, save_weights_only=True
    )
    trainer = make_trainer(tmp_path, callbacks=[callback, ckpt], max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, make_loader())
    dense = make_model(cls=TinyNetEval, seed=1)
    dense_trainer = make_trainer(tmp_path / "dense", callbacks=[], max_epochs=1)
    dense_trainer.fit(dense, make_loader())
    dense_trainer.save_checkpoint(tmp_path / "dense.ckpt")
    _evaluate_checkpoint(trainer, dense, "validate", tmp_path / "dense.ckpt")

    def pruned_by_callback() -> list[int]:
        return [int((~m).sum()) for m in callback._current_masks()]

    for epoch in (0, 1, 0):
        _evaluate_checkpoint(trainer, model, "validate", tmp_path / f"epoch={epoch}.ckpt")
        zeros = [int((_load(tmp_path / f"epoch={epoch}.ckpt")["state_dict"][n] == 0).sum()) for n in WEIGHTS]
        assert pruned_by_callback() == zeros
    if masking == "in_place":
        return  # a fit of another model takes the masks kept beside the plain weights
    other = make_model(cls=TinyNetEval, seed=2)
    make_trainer(tmp_path / "other", callbacks=[callback], max_epochs=1).fit(other, make_loader())
    _evaluate_checkpoint(trainer, model, "validate", tmp_path / "epoch=1.ckpt")
    assert [int((~m).sum()) for m in masks_of(model).values()] == [
        round(0.6 * m.numel()) for m in masks_of(model).values()
    ]


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_a_weights_only_checkpoint_evaluated_after_a_full_one_sets_what_is_saved_next(
    tmp_path: Path, masking: str
) -> None:
    """The full checkpoint's state loads after its weights; the weights-only one has none: what the callback
    saves after both, and what the next fit starts from, are the masks that go with the last one's weights."""
    model, trainer, checkpoint = _fitted_twice_pruned(tmp_path, masking)
    callback = next(c for c in trainer.callbacks if isinstance(c, PruningCallback))
    _evaluate_checkpoint(trainer, model, "validate", tmp_path / "epoch=1.ckpt")
    del checkpoint["callbacks"]
    torch.save(checkpoint, tmp_path / "weights-only.ckpt")
    _evaluate_checkpoint(trainer, model, "validate", tmp_path / "weights-only.ckpt")
    zeros = {n: checkpoint["state_dict"][n] != 0 for n in WEIGHTS}
    assert_tensors_equal(dict(zip(WEIGHTS, callback._current_masks())), zeros)
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    after = _state_of(_load(tmp_path / "after.ckpt"), callback)["masks"]
    assert_tensors_equal({n: unpack_mask(m["bits"], m["shape"]) for n, m in after.items()}, zeros)


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_a_state_saved_before_the_first_event_prunes_no_zeros_it_finds(tmp_path: Path, masking: str) -> None:
    """A checkpoint saved before any event says that nothing is pruned: weights that happen to be zero in it
    stay unpruned when it is evaluated."""
    model, trainer, checkpoint = _fitted_twice_pruned(tmp_path, masking)
    callback = next(c for c in trainer.callbacks if isinstance(c, PruningCallback))
    _state_of(checkpoint, callback)["masks"] = {}
    checkpoint["state_dict"]["fc1.weight"][:, 0] = 0.0
    torch.save(checkpoint, tmp_path / "before-events.ckpt")
    _evaluate_checkpoint(trainer, model, "validate", tmp_path / "before-events.ckpt")
    assert all(bool(m.all()) for m in callback._current_masks())
    assert torch.equal(effective_weights(model)["fc1.weight"], checkpoint["state_dict"]["fc1.weight"])


def test_masks_kept_beside_plain_weights_follow_an_evaluated_weights_only_checkpoint(tmp_path: Path) -> None:
    """After a fit that made the pruning permanent, the masks kept for the next fit go with the weights that a
    weights-only checkpoint's evaluation loaded (those of an earlier epoch), not with the fit's last ones."""
    model = make_model(cls=TinyNetEval)
    callback = PruningCallback(schedule=Explicit({0: 0.3, 1: 0.9}))
    ckpt = ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", every_n_epochs=1, save_top_k=-1, save_weights_only=True
    )
    trainer = make_trainer(tmp_path, callbacks=[callback, ckpt], max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, make_loader())
    for epoch in (0, 1, 0):
        _evaluate_checkpoint(trainer, model, "validate", tmp_path / f"epoch={epoch}.ckpt")
        weights = _load(tmp_path / f"epoch={epoch}.ckpt")["state_dict"]
        kept = callback.state_dict()["masks"]
        assert_tensors_equal(
            {n: unpack_mask(m["bits"], m["shape"]) for n, m in kept.items()}, {n: weights[n] != 0 for n in WEIGHTS}
        )


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
@pytest.mark.parametrize("make_permanent", [True, False], ids=["permanent", "kept"])
@pytest.mark.parametrize("kind", ["full", "weights-only"])
def test_evaluating_another_model_leaves_the_fitted_models_state(
    tmp_path: Path, masking: str, make_permanent: bool, kind: str
) -> None:
    """A copy of the model taken while it trained (still reparametrized), evaluated on the same Trainer with a
    checkpoint of an earlier epoch: what the callback saves and restores for the model it fitted stays as it was."""
    copies: list[TinyNet] = []

    class Keep(Callback):
        def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
            if trainer.current_epoch == 0:
                copies.append(copy.deepcopy(pl_module))

    model = make_model(cls=TinyNetEval)
    callback = PruningCallback(schedule=Explicit({0: 0.3, 1: 0.9}), make_permanent=make_permanent, masking=masking)
    ckpt = ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", every_n_epochs=1, save_top_k=-1, save_weights_only=kind != "full"
    )
    trainer = make_trainer(tmp_path, callbacks=[callback, ckpt, Keep()], max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, make_loader())
    before = callback.state_dict()
    for other in (copies[0], TinyNetEval.load_from_checkpoint(tmp_path / "epoch=0.ckpt")):
        _evaluate_checkpoint(trainer, other, "validate", tmp_path / "epoch=0.ckpt")
        after = callback.state_dict()
        assert after["masks"].keys() == before["masks"].keys() == set(WEIGHTS)
        for name, mask in before["masks"].items():
            assert torch.equal(mask["bits"], after["masks"][name]["bits"]), name
        assert after["done_epoch"] == before["done_epoch"] == 1
    assert callback._evaluated is None


def _evaluate_checkpoint(trainer: Trainer, model: TinyNet, stage: str, path: Path) -> None:
    run = {"validate": trainer.validate, "test": trainer.test, "predict": trainer.predict}[stage]
    run(model, make_loader(seed=2), ckpt_path=path)


# ---------------------------------------------------------------- two callbacks


def _two_callbacks() -> list[PruningCallback]:
    return [
        PruningCallback(targets=["fc1.weight"], schedule=Explicit({0: 0.3, 2: 0.6}), make_permanent=False),
        PruningCallback(
            method="random_unstructured",
            targets=["fc2.weight"],
            schedule=Explicit({1: 0.5, 2: 0.7}),
            seed=5,
            make_permanent=False,
        ),
    ]


def test_two_callbacks_with_different_targets_both_restore(tmp_path: Path) -> None:
    first, second = _two_callbacks()
    assert first.state_key != second.state_key
    model_a = make_model()
    make_trainer(tmp_path / "a", callbacks=[first, second], max_epochs=3).fit(model_a, make_loader())

    callbacks = _two_callbacks()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    make_trainer(tmp_path, callbacks=[*callbacks, ckpt], max_epochs=2, enable_checkpointing=True).fit(
        make_model(), make_loader()
    )
    path = tmp_path / "ckpt" / "epoch=1.ckpt"
    states = _load(path)["callbacks"]
    assert sorted(states[callbacks[0].state_key]["masks"]) == ["fc1.weight"]
    assert sorted(states[callbacks[1].state_key]["masks"]) == ["fc2.weight"]

    model_b = make_model(seed=7)
    make_trainer(tmp_path, callbacks=_two_callbacks(), max_epochs=3).fit(model_b, make_loader(), ckpt_path=path)
    assert sorted(masks_of(model_b)) == list(WEIGHTS)
    assert_tensors_equal(masks_of(model_b), masks_of(model_a))
    assert_tensors_equal(effective_weights(model_b), effective_weights(model_a))


# ---------------------------------------------------------------- older checkpoint states


@pytest.mark.parametrize(
    "dropped",
    [
        pytest.param(("snapshot",), id="no_snapshot"),
        pytest.param(("round",), id="no_round"),
        pytest.param(("snapshot", "round", "version", "seed"), id="no_snapshot_round_version_seed"),
    ],
)
def test_older_checkpoint_state_without_some_keys_resumes(tmp_path: Path, dropped: tuple[str, ...]) -> None:
    def make() -> PruningCallback:
        return PruningCallback(
            method="random_unstructured", schedule=Explicit({0: 0.3, 1: 0.5, 2: 0.7}), seed=3, make_permanent=False
        )

    model_a = make_model()
    make_trainer(tmp_path / "a", callbacks=[make()], max_epochs=3).fit(model_a, make_loader())

    callback = make()
    path = _two_epoch_checkpoint(tmp_path, callback)
    checkpoint = _load(path)
    state = _state_of(checkpoint, callback)
    for key in dropped:
        del state[key]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)

    model_b = make_model(seed=7)
    make_trainer(tmp_path, callbacks=[make()], max_epochs=3).fit(model_b, make_loader(), ckpt_path=old)
    assert_tensors_equal(masks_of(model_b), masks_of(model_a))
    assert_tensors_equal(effective_weights(model_b), effective_weights(model_a))


def test_load_state_dict_accepts_a_minimal_state() -> None:
    callback = PruningCallback(seed=11)
    callback.load_state_dict({"masks": {}})
    state = callback.state_dict()
    assert (state["done_epoch"], state["round"], state["seed"], state["snapshot"]) == (-1, 0, 11, None)


def test_resume_with_a_different_configuration_warns(tmp_path) -> None:
    from tests.tutorial import LitLeNet, lenet_data

    def fit(callback, epochs, ckpt_path=None, extra=()):
        torch.manual_seed(0)
        trainer = Trainer(
            accelerator="cpu",  # compared with CPU references
            max_epochs=epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            callbacks=[callback, *extra],
        )
        trainer.fit(LitLeNet(), lenet_data(), ckpt_path=ckpt_path)

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    fit(PruningCallback(schedule=0.5), 1, extra=[checkpoints])
    with pytest.warns(UserWarning, match="must match the run that wrote it"):
        fit(PruningCallback(schedule=0.5, scope="global"), 2, ckpt_path=tmp_path / "ckpt" / "last.ckpt")


def test_a_resume_from_a_checkpoint_written_without_the_callback_warns_of_the_events_it_runs(tmp_path) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="dense")
    make_trainer(tmp_path, callbacks=[checkpoints], max_epochs=3, enable_checkpointing=True).fit(
        make_model(), make_loader()
    )
    callback = PruningCallback(schedule=Explicit({0: 0.3, 1: 0.5, 3: 0.6}), make_permanent=False)
    model = make_model()
    with pytest.warns(UserWarning, match=r"the events after epochs \[0, 1\], all before epoch 3") as caught:
        make_trainer(tmp_path, callbacks=[callback], max_epochs=4).fit(
            model, make_loader(), ckpt_path=tmp_path / "ckpt" / "dense.ckpt"
        )
    assert sum("holds no state of this callback" in str(w.message) for w in caught) == 1
    assert (~model.fc1.weight_mask).float().mean() == pytest.approx(0.6, abs=0.01)


def _mixed(i: int) -> int:
    x = (i ^ (i >> 32)) & 0xFFFFFFFF
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    return (x >> 16) ^ x


def test_mask_checksum_counts_and_sums_flat_indices_across_chunks(monkeypatch) -> None:
    """The ranks' mask check: surviving entries, the sum of their flat indices and of their hashes, chunk by
    chunk."""
    monkeypatch.setattr(serialization, "_CHUNK", 8)
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(shape, generator=g) > 0.5 for shape in [(3,), (5, 7), (4, 4, 3), (1,)]]
    kept = [m.reshape(-1).nonzero().flatten().tolist() for m in masks]
    expected = torch.tensor([[len(k), sum(k), sum(map(_mixed, k)) % (2**31 - 1)] for k in kept])
    assert torch.equal(serialization.mask_checksum(masks), expected)
    assert _mixed(2**40 + 5) == int(serialization._mix(torch.tensor([2**40 + 5])))


def test_mask_checksum_tells_apart_row_sets_with_equal_index_sums() -> None:
    """Rows {0, 3} against {1, 2}, and {0, 3, 5, 6} against {1, 2, 4, 7} (equal sums of indices and of
    their squares): a structured method's picks on two ranks whose weights diverged."""
    for first, second in [([0, 3], [1, 2]), ([0, 3, 5, 6], [1, 2, 4, 7])]:
        a, b = torch.zeros(8, 4, dtype=torch.bool), torch.zeros(8, 4, dtype=torch.bool)
        a[first], b[second] = True, True
        sums = serialization.mask_checksum([a, b])
        assert torch.equal(sums[0, :2], sums[1, :2]) and not torch.equal(sums[0], sums[1])


# ---------------------------------------------------------------- after fit, and the same model again


def _at_least_half_zero(model: TinyNet) -> bool:
    weights = effective_weights(model)
    return all(int((weights[name] == 0).sum()) >= round(0.5 * weights[name].numel()) for name in WEIGHTS)


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
@pytest.mark.parametrize("make_permanent", [True, False])
def test_checkpoint_saved_after_fit_keeps_the_masks(tmp_path: Path, masking: str, make_permanent: bool) -> None:
    """`trainer.save_checkpoint` after `fit` holds the masks, made permanent or not, and a resume to more
    epochs in a fresh model ends with the masks of an uninterrupted run: nothing grows back."""

    def callback() -> PruningCallback:
        return PruningCallback(schedule=Explicit({0: 0.5}), masking=masking, make_permanent=make_permanent)

    trainer = make_trainer(tmp_path, callbacks=[callback()], max_epochs=2)
    trainer.fit(make_model(), make_loader())
    trainer.save_checkpoint(tmp_path / "after_fit.ckpt")
    saved = next(iter(torch.load(tmp_path / "after_fit.ckpt", weights_only=False)["callbacks"].values()))
    assert sorted(saved["masks"]) == list(WEIGHTS)

    uninterrupted = make_model()
    make_trainer(tmp_path, callbacks=[callback()], max_epochs=4).fit(uninterrupted, make_loader())
    resumed = make_model(seed=99)
    resumed_callback = callback()
    make_trainer(tmp_path, callbacks=[resumed_callback], max_epochs=4).fit(
        resumed, make_loader(), ckpt_path=tmp_path / "after_fit.ckpt"
    )
    for name, weight in effective_weights(resumed).items():
        assert torch.equal(weight, effective_weights(uninterrupted)[name]), name
    assert _at_least_half_zero(resumed), "pruned weights grew back"


@pytest.mark.parametrize("make_permanent", [True, False])
def test_the_same_model_resumes_its_own_checkpoints(tmp_path: Path, make_permanent: bool) -> None:
    """Pruning keeps every parameter in its place, so optimizers built on the pruned model index their
    state as the checkpoints do: the same model object resumes its own run's checkpoint, and a fresh
    model resumes a checkpoint of the pruned model's second fit."""
    model = make_model()
    order = [name for name, _ in model.named_parameters()]
    callback = PruningCallback(schedule=Explicit({0: 0.5}), make_permanent=make_permanent)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "a", filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    make_trainer(tmp_path, callbacks=[callback, ckpt], max_epochs=2, enable_checkpointing=True).fit(
        model, make_loader()
    )
    if make_permanent:
        assert [name for name, _ in model.named_parameters()] == order
    else:
        assert [name for name, _ in model.named_parameters()] == [n.replace("weight", "weight_orig") for n in order]
    make_trainer(tmp_path, callbacks=[callback], max_epochs=3).fit(
        model, make_loader(), ckpt_path=tmp_path / "a" / "epoch=0.ckpt"
    )

    ckpt = ModelCheckpoint(dirpath=tmp_path / "b", filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    make_trainer(tmp_path, callbacks=[callback, ckpt], max_epochs=5, enable_checkpointing=True).fit(
        model, make_loader()
    )
    fresh = make_model(seed=99)
    make_trainer(tmp_path, callbacks=[PruningCallback(schedule=Explicit({0: 0.5}))], max_epochs=4).fit(
        fresh, make_loader(), ckpt_path=tmp_path / "b" / "epoch=3.ckpt"
    )
    assert _at_least_half_zero(fresh)


def test_rewind_without_a_snapshot_fails_before_the_masks_change(tmp_path: Path) -> None:
    """Resuming a checkpoint written without the callback past the rewind epoch: the missed events would
    have to rewind, and there is nothing to rewind to."""
    dense = make_trainer(tmp_path, callbacks=[], max_epochs=2)
    dense.fit(make_model(), make_loader())
    dense.save_checkpoint(tmp_path / "dense.ckpt")
    model = make_model(seed=1)
    callback = PruningCallback(schedule=Explicit({0: 0.3, 2: 0.5}), rewind=Rewind(epoch=0), make_permanent=False)
    with pytest.raises(RuntimeError, match=r"Rewind\(epoch=0\)`: the event after epoch 0 has no snapshot.*unchanged"):
        make_trainer(tmp_path, callbacks=[callback], max_epochs=4).fit(
            model, make_loader(), ckpt_path=tmp_path / "dense.ckpt"
        )
    assert masks_of(model) == {}
    saved = torch.load(tmp_path / "dense.ckpt", weights_only=False)["state_dict"]
    assert_tensors_equal(effective_weights(model), saved)


def test_callbacks_that_differ_in_exclude_only_keep_apart(tmp_path: Path) -> None:
    """`exclude` is part of the state key (when given), and a checkpoint whose state sits under the key
    of earlier versions, which left `exclude` out, still resumes."""

    def callbacks() -> list[PruningCallback]:
        return [
            PruningCallback(schedule=Explicit({0: 0.3}), exclude=["fc2.weight"], make_permanent=False),
            PruningCallback(schedule=Explicit({1: 0.6}), exclude=["fc1.weight"], make_permanent=False),
        ]

    first = callbacks()
    assert first[0].state_key != first[1].state_key
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    make_trainer(tmp_path, callbacks=[*first, ckpt], max_epochs=2, enable_checkpointing=True).fit(
        make_model(), make_loader()
    )
    path = tmp_path / "ckpt" / "epoch=1.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    assert {first[0].state_key, first[1].state_key} <= set(checkpoint["callbacks"])
    uninterrupted = make_model()
    make_trainer(tmp_path, callbacks=callbacks(), max_epochs=3).fit(uninterrupted, make_loader())
    expected = masks_of(uninterrupted)

    resumed, again = make_model(seed=99), callbacks()
    make_trainer(tmp_path, callbacks=again, max_epochs=3).fit(resumed, make_loader(), ckpt_path=path)
    assert_tensors_equal(masks_of(resumed), expected)

    legacy = {key: value for key, value in checkpoint["callbacks"].items() if key != first[0].state_key}
    legacy[first[0]._key(exclude=[])] = checkpoint["callbacks"][first[0].state_key]
    torch.save({**checkpoint, "callbacks": legacy}, tmp_path / "legacy.ckpt")
    older = make_model(seed=98)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, callbacks=callbacks(), max_epochs=3).fit(
            older, make_loader(), ckpt_path=tmp_path / "legacy.ckpt"
        )
    assert not [w for w in caught if "holds pruning state" in str(w.message)], "the state under the old key was lost"
    assert_tensors_equal(masks_of(older), expected)


def test_weights_only_checkpoint_is_plain_for_every_callback(tmp_path: Path) -> None:
    """Two callbacks pruning different tensors, saved weights-only after a fit that kept the
    reparametrization: plain weights for both, while the module's own state_dict keeps the layout."""
    callbacks = [
        PruningCallback(targets=["fc1.weight"], schedule=0.5, make_permanent=False),
        PruningCallback(targets=["fc2.weight"], schedule=0.3, make_permanent=False),
    ]
    trainer = make_trainer(tmp_path, callbacks=callbacks, max_epochs=1)
    model = make_model()
    trainer.fit(model, make_loader())
    assert {"fc1.weight_orig", "fc1.weight_mask", "fc2.weight_orig", "fc2.weight_mask"} <= set(model.state_dict())
    trainer.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    saved = _load(tmp_path / "weights.ckpt")["state_dict"]
    assert sorted(saved) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    assert_tensors_equal(saved, effective_weights(model))
    loaded = TinyNet.load_from_checkpoint(tmp_path / "weights.ckpt", strict=True)
    assert_tensors_equal(effective_weights(loaded), effective_weights(model))


@pytest.mark.parametrize("first_event", [0, 1])
@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
@pytest.mark.parametrize("make_permanent", [True, False])
def test_the_model_that_wrote_a_checkpoint_resumes_it_exactly(
    tmp_path: Path, masking: str, make_permanent: bool, first_event: int
) -> None:
    """By then that model holds the later masks of its own run: the resume sets the saved ones back
    (it does not combine them), or none if the checkpoint predates the first event, and ends like
    an uninterrupted run."""

    def callback() -> PruningCallback:
        schedule = Explicit({first_event: 0.3, 2: 0.7})
        return PruningCallback(schedule=schedule, masking=masking, make_permanent=make_permanent)

    uninterrupted = make_model()
    make_trainer(tmp_path, callbacks=[callback()], max_epochs=4).fit(uninterrupted, make_loader())
    model, again = make_model(), callback()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    make_trainer(tmp_path, callbacks=[again, ckpt], max_epochs=4, enable_checkpointing=True).fit(model, make_loader())
    make_trainer(tmp_path, callbacks=[again], max_epochs=4).fit(
        model, make_loader(), ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt"
    )
    assert_tensors_equal(effective_weights(model), effective_weights(uninterrupted))


class _FinderAtEpochStart(LearningRateFinder):
    """Lightning's documented way to run the finder during a fit (the `LearningRateFinder` docstring):
    it saves the state, tries learning rates, and loads the state back."""

    def on_fit_start(self, *args: Any, **kwargs: Any) -> None:
        return

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            self.lr_find(trainer, pl_module)


class _PrunedCounts(Callback):
    """Records, after every training batch, the epoch, how many entries the masks prune, and how many
    of those entries are non-zero in the weights the forward uses."""

    def __init__(self, callback: PruningCallback) -> None:
        self.callback, self.seen = callback, []

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, *args: Any) -> None:
        masks = self.callback._current_masks()
        weights = effective_weights(pl_module)
        pruned = sum(int((~m).sum()) for m in masks)
        nonzero = sum(int((weights[t.qualname][~m] != 0).sum()) for t, m in zip(self.callback.targets, masks))
        self.seen.append((trainer.current_epoch, pruned, nonzero))


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_state_loaded_back_within_a_fit_keeps_the_masks(tmp_path: Path, masking: str) -> None:
    """The finder loads plain weights back (masks all True) and the callback's state: its masks are set
    at once, as saved, so pruned weights stay at zero and the next event prunes on top of them."""
    callback = PruningCallback(schedule=Explicit({0: 0.5, 2: 0.7}), masking=masking, make_permanent=False)
    probe = _PrunedCounts(callback)
    finder = _FinderAtEpochStart(num_training_steps=6)
    trainer = make_trainer(tmp_path, callbacks=[callback, probe, finder], max_epochs=3, limit_train_batches=1.0)
    trainer.fit(make_model(), make_loader(n=96))
    half = round(0.5 * 91) + round(0.5 * 39)
    assert {(epoch, pruned, nonzero) for epoch, pruned, nonzero in probe.seen if epoch > 0} == {
        (1, half, 0),
        (2, half, 0),
    }
    assert [int((~m).sum()) for m in callback._current_masks()] == [round(0.7 * 91), round(0.7 * 39)]


@pytest.mark.parametrize("pruned_by", ["torch", "an earlier fit"])
def test_a_finder_at_fit_start_keeps_the_pruning_the_model_had(tmp_path: Path, pruned_by: str) -> None:
    """`LearningRateFinder` in its default `on_fit_start`, before this callback's, saves and loads back its state:
    a state saved before the callback looked at the model says nothing of its masks, and unprunes nothing."""
    model = make_model()
    if pruned_by == "torch":
        prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    else:
        earlier = PruningCallback(targets=["fc1.weight"], schedule=Explicit({0: 0.5}), make_permanent=False)
        make_trainer(tmp_path / "earlier", callbacks=[earlier], max_epochs=1).fit(model, make_loader())
    zeros = int((model.fc1.weight == 0).sum())
    assert zeros == round(0.5 * 91)
    callback = PruningCallback(targets=["fc1.weight"], schedule=Explicit({5: 0.9}), make_permanent=False)
    finder = LearningRateFinder(num_training_steps=4)
    make_trainer(tmp_path, callbacks=[callback, finder], max_epochs=2).fit(model, make_loader(n=96))
    assert int((model.fc1.weight == 0).sum()) == zeros


def test_rewind_snapshot_is_taken_when_a_resume_skips_the_epoch_start(tmp_path: Path) -> None:
    """A checkpoint written at the last batch of epoch 0 resumes into epoch 1 without
    `on_train_epoch_start`: the snapshot for `Rewind(epoch=1)` is taken at `on_train_start` instead."""

    def callback() -> PruningCallback:
        return PruningCallback(schedule=Explicit({1: 0.5, 2: 0.7}), rewind=Rewind(epoch=1), make_permanent=False)

    uninterrupted = make_model()
    steps = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=3)
    make_trainer(tmp_path, callbacks=[callback(), steps], max_epochs=3, enable_checkpointing=True).fit(
        uninterrupted, make_loader()
    )
    resumed = make_model(seed=5)
    make_trainer(tmp_path, callbacks=[callback()], max_epochs=3).fit(
        resumed, make_loader(), ckpt_path=tmp_path / "ckpt" / "epoch=0-step=3.ckpt"
    )
    assert_tensors_equal(effective_weights(resumed), effective_weights(uninterrupted))


def test_a_fit_after_one_that_ended_without_cleanup_resumes(tmp_path: Path) -> None:
    """A fit whose `on_exception` never reached this callback (an earlier callback's raised) leaves it
    marked as fitting; the next fit's `setup` clears that before the checkpoint's state is loaded."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", every_n_epochs=1, save_top_k=-1)
    callback = PruningCallback(schedule=Explicit({0: 0.5}), make_permanent=False)
    make_trainer(tmp_path, callbacks=[callback, ckpt], max_epochs=1, enable_checkpointing=True).fit(
        make_model(), make_loader()
    )
    callback._fitting = True  # as after such a failed fit
    model = make_model(seed=4)
    make_trainer(tmp_path, callbacks=[callback], max_epochs=2).fit(
        model, make_loader(), ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt"
    )
    assert [int((~m).sum()) for m in masks_of(model).values()] == [round(0.5 * 91), round(0.5 * 39)]


class _OptimizerOnly(TinyNet):
    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def test_a_rewind_snapshot_that_does_not_fit_fails_at_train_start(tmp_path: Path) -> None:
    """A snapshot saved without a scheduler, resumed in a run that has one: refused before training
    resumes, not at the next event an epoch later."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", every_n_epochs=1, save_top_k=-1)

    def callback() -> PruningCallback:
        return PruningCallback(schedule=Explicit({0: 0.3, 3: 0.5}), rewind=Rewind(epoch=0), make_permanent=False)

    make_trainer(tmp_path, callbacks=[callback(), ckpt], max_epochs=1, enable_checkpointing=True).fit(
        make_model(cls=_OptimizerOnly), make_loader()
    )
    model = make_model(seed=3)  # SGD and StepLR
    steps = EpochRecorder()
    with pytest.raises(RuntimeError, match=r"snapshot restored from the checkpoint does not fit.*1 optimizers and 0"):
        make_trainer(tmp_path, callbacks=[callback(), steps], max_epochs=4).fit(
            model, make_loader(), ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt"
        )
    assert steps.masks == {}, "no epoch was trained"


class _GrowingOptimizer(Callback):
    """Adds the second layer to the optimizer as a new parameter group at the start of epoch 1."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            trainer.optimizers[0].add_param_group({"params": list(pl_module.fc2.parameters())})


class _FirstLayerOptimizer(TinyNet):
    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.fc1.parameters(), lr=0.1, momentum=0.9)


def test_a_rewind_that_cannot_restore_the_optimizer_fails_before_the_masks_change(tmp_path: Path) -> None:
    """A parameter group added after the snapshot (as BackboneFinetuning does): the event refuses to
    rewind before it commits its masks or writes a weight."""
    callback = PruningCallback(schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0), make_permanent=False)
    model = make_model(cls=_FirstLayerOptimizer)
    before: dict[str, torch.Tensor] = {}

    class _Before(Callback):
        def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
            before.update({k: v.clone() for k, v in effective_weights(pl_module).items()})

    with pytest.raises(RuntimeError, match=r"event after epoch 1: .*groups of sizes \[2, 2\].*had \[2\].*unchanged"):
        make_trainer(tmp_path, callbacks=[_Before(), callback, _GrowingOptimizer()], max_epochs=3).fit(
            model, make_loader()
        )
    assert masks_of(model) == {}
    assert_tensors_equal(effective_weights(model), before)


class _SaveAtEpochEnd(Callback):
    """Saves a checkpoint in `on_train_epoch_end`; listed before the PruningCallback, before its event."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        trainer.save_checkpoint(self.directory / f"e{trainer.current_epoch}.ckpt")


def test_a_resume_with_no_epoch_left_warns_of_an_event_it_cannot_run(tmp_path: Path) -> None:
    def callback() -> PruningCallback:
        return PruningCallback(schedule=Explicit({0: 0.3, 2: 0.8}), make_permanent=False)

    make_trainer(tmp_path, callbacks=[_SaveAtEpochEnd(tmp_path), callback()], max_epochs=3).fit(
        make_model(), make_loader()
    )
    model = make_model(seed=1)
    with pytest.warns(UserWarning, match=r"end of epoch 2, before this callback's pruning event for epoch\(s\) \[2\]"):
        make_trainer(tmp_path, callbacks=[callback()], max_epochs=3).fit(
            model, make_loader(), ckpt_path=tmp_path / "e2.ckpt"
        )
    longer = make_model(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(ckpt_path|does not have many workers|exists and is not empty)")
        make_trainer(tmp_path, callbacks=[callback()], max_epochs=4).fit(
            longer, make_loader(), ckpt_path=tmp_path / "e2.ckpt"
        )
    assert [int((~m).sum()) for m in masks_of(longer).values()] == [round(0.8 * 91), round(0.8 * 39)]


@pytest.mark.parametrize("max_steps", [7, 9], ids=["within-an-epoch", "at-its-last-batch"])
def test_a_resume_from_the_step_that_reached_max_steps_warns_of_the_event_it_cannot_run(tmp_path, max_steps) -> None:
    """`ModelCheckpoint(every_n_train_steps=1)` writes the fit's last step before the end of the epoch that
    `max_steps` ends; resumed with the same `max_steps`, Lightning trains nothing and runs no epoch end."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    schedule = Explicit({0: 0.3, 1: 0.5, 2: 0.8})
    options: dict[str, Any] = {"max_epochs": 10, "max_steps": max_steps, "enable_checkpointing": True}
    make_trainer(tmp_path, callbacks=[PruningCallback(schedule=schedule), checkpoints], **options).fit(
        make_model(), make_loader()
    )
    with pytest.warns(
        UserWarning,
        match=rf"at step {max_steps} .*in epoch 2, before this callback's pruning event for epoch\(s\) \[2\]",
    ):
        make_trainer(tmp_path, callbacks=[PruningCallback(schedule=schedule)], **options).fit(
            make_model(seed=1), make_loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
        )


class _WithBackbone(TinyNet):
    """`fc1` is the backbone that `BackboneFinetuning` freezes and later unfreezes into a new parameter group."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(self.fc1)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)


@pytest.mark.parametrize("order", ["pruning first", "finetuning first"])
@pytest.mark.parametrize("unfreeze", [1, 3], ids=["unfrozen-before-the-checkpoint", "after"])
@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_a_fit_with_backbone_finetuning_resumes(tmp_path: Path, order: str, unfreeze: int, masking: str) -> None:
    """`BackboneFinetuning` keeps its parameter groups by parameter name, taken before or after an event
    reparametrized them: checkpoints hold the plain names, and a resume looks them up under the model's own.

    Resumed after its unfreeze, `BackboneFinetuning` itself does not end as the uninterrupted fit, even
    without pruning (measured): there the resume is only checked to run, with the schedule's counts."""
    from lightning.pytorch.callbacks import BackboneFinetuning

    def run(epochs: int, root: Path, ckpt_path: Path | None = None) -> TinyNet:
        pruning = PruningCallback(scope="global", schedule=Explicit({0: 0.3, 1: 0.5, 2: 0.7}), masking=masking)
        finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=unfreeze, backbone_initial_ratio_lr=1.0)
        checkpoints = ModelCheckpoint(dirpath=root, save_top_k=-1, filename="{epoch}")
        callbacks = [pruning, finetuning] if order == "pruning first" else [finetuning, pruning]
        model = make_model(cls=_WithBackbone)
        trainer = make_trainer(root, callbacks=[*callbacks, checkpoints], max_epochs=epochs, enable_checkpointing=True)
        trainer.fit(model, make_loader(), ckpt_path=ckpt_path)
        return model

    whole = run(4, tmp_path / "whole")
    saved = torch.load(tmp_path / "whole" / "epoch=1.ckpt", weights_only=False)
    names = [
        n
        for state in saved["callbacks"].values()
        for groups in state.get("internal_optimizer_metadata", {}).values()
        for g in groups
        for n in g["params"]
    ]
    assert names and not [n for n in names if n.endswith("_orig")]
    resumed = run(4, tmp_path / "resumed", tmp_path / "whole" / "epoch=1.ckpt")
    weights = [resumed.fc1.weight, resumed.fc2.weight]
    assert sum(int((w == 0).sum()) for w in weights) == round(0.7 * sum(w.numel() for w in weights))
    if unfreeze > 1:
        for name, value in effective_weights(whole).items():
            assert torch.equal(effective_weights(resumed)[name], value), name


@pytest.mark.parametrize("make_permanent", [True, False])
def test_a_checkpoint_saved_after_fit_with_backbone_finetuning_resumes(tmp_path: Path, make_permanent: bool) -> None:
    """Saved after `fit` (made permanent: no `_orig` left to read the names from) and resumed, into the same
    reparametrized model or not, with `BackboneFinetuning` listed first: its `on_fit_start` finds its names."""
    from lightning.pytorch.callbacks import BackboneFinetuning

    def callbacks() -> list[Callback]:
        return [
            BackboneFinetuning(unfreeze_backbone_at_epoch=2, backbone_initial_ratio_lr=1.0),
            PruningCallback(scope="global", schedule=Explicit({0: 0.3, 1: 0.5, 3: 0.7}), make_permanent=make_permanent),
        ]

    model = make_model(cls=_WithBackbone)
    trainer = make_trainer(tmp_path, callbacks=callbacks(), max_epochs=3)
    trainer.fit(model, make_loader())
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    resumed = model if not make_permanent else make_model(cls=_WithBackbone)
    make_trainer(tmp_path, callbacks=callbacks(), max_epochs=5).fit(
        resumed, make_loader(), ckpt_path=tmp_path / "after.ckpt"
    )
    weights = [resumed.fc1.weight, resumed.fc2.weight]
    assert sum(int((w == 0).sum()) for w in weights) == round(0.7 * sum(w.numel() for w in weights))


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_a_callback_that_has_not_pruned_resumes_beside_one_that_shares_its_target(tmp_path, masking) -> None:
    """One callback prunes `fc1` after epoch 0, another `fc1` and `fc2` after epoch 2: the second one's
    checkpoint after epoch 1 holds the first one's `fc1` mask and none for `fc2`, which it has not pruned."""

    def callbacks() -> list[Callback]:
        return [
            PruningCallback(targets=["fc1.weight"], schedule=Explicit({0: 0.5}), masking=masking),
            PruningCallback(method="ln_structured", targets=["fc1.weight", "fc2.weight"], schedule=Explicit({2: 0.3})),
        ]

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    model = make_model()
    make_trainer(tmp_path, callbacks=[*callbacks(), saver], max_epochs=4, enable_checkpointing=True).fit(
        model, make_loader()
    )
    resumed = make_model(seed=1)
    make_trainer(tmp_path / "resumed", callbacks=callbacks(), max_epochs=4).fit(
        resumed, make_loader(), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt"
    )
    assert_tensors_equal(dict(resumed.named_parameters()), dict(model.named_parameters()))


@pytest.mark.parametrize("order", ["AB", "BA"])
@pytest.mark.parametrize("permanent", [True, False], ids=["both-permanent", "second-not-permanent"])
@pytest.mark.parametrize(("first", "second"), [("reparametrize", "reparametrize"), ("in_place", "reparametrize")])
def test_overlapping_callbacks_keep_their_masks_through_make_permanent(
    tmp_path, order, permanent, first, second
) -> None:
    """Both callbacks keep the masks they shared before either made that tensor permanent: a second `fit` and
    a resume from the checkpoint saved after the first start from all of them."""

    def callbacks() -> list[Callback]:
        a = PruningCallback(targets=["fc1.weight"], schedule=Explicit({0: 0.3}), masking=first)
        b = PruningCallback(
            method="ln_structured",
            targets=["fc1.weight", "fc2.weight"],
            schedule=Explicit({1: 0.4}),
            masking=second,
            make_permanent=permanent,
        )
        return [a, b] if order == "AB" else [b, a]

    model = make_model()
    trainer = make_trainer(tmp_path, callbacks=callbacks(), max_epochs=2)
    trainer.fit(model, make_loader())
    pruned = model.fc1.weight == 0
    assert int(pruned.sum()) > round(0.3 * 91) and int((~pruned).any(dim=1).logical_not().sum()) > 0
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    resumed = make_model(seed=1)
    make_trainer(tmp_path / "resumed", callbacks=callbacks(), max_epochs=3).fit(
        resumed, make_loader(), ckpt_path=tmp_path / "after.ckpt"
    )
    trainer.fit_loop.max_epochs = 3
    trainer.fit(model, make_loader())  # a second fit on the same Trainer
    for fitted in (model, resumed):
        assert torch.equal(fitted.fc1.weight == 0, pruned)
