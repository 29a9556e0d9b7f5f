"""Lottery-ticket rewinding through PruningCallback, checked against values recorded during ``fit``.

A tiny model (two Linear layers around a BatchNorm, so there are buffers), SGD with momentum and
an epoch-interval ``StepLR(step_size=1, gamma=0.5)``: optimizer state and learning rate change every
epoch, so a rewind that forgets either is visible.
"""

from __future__ import annotations

import copy
import csv
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import PruningCallback, Rewind
from lightning_prune.schedules import Constant, Explicit, Geometric, Polynomial
from tests.helpers import (
    assert_tensors_equal,
    effective_weights,
    lightning_at_least,
    make_loader,
    make_model,
    make_trainer,
)

LR = 0.1
WEIGHTS = ["fc1.weight", "fc2.weight"]
FAN_IN = {"fc1.weight": 8, "fc2.weight": 16}
TOTAL = 8 * 16 + 16 * 3  # targeted entries


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class TinyVal(Tiny):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


def _model(seed: int = 0, cls: type[Tiny] = Tiny) -> Tiny:
    torch.manual_seed(seed)
    return cls()


def _plain(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under its plain name (``_orig`` read as the tensor, masks left out)."""
    out = {}
    for name, value in module.state_dict(keep_vars=True).items():
        if name.endswith("_mask"):
            continue
        out[name.removesuffix("_orig")] = value.detach().clone()
    return out


def _capture(trainer: Trainer, module: nn.Module) -> dict:
    opt = trainer.optimizers[0]
    params = [p for group in opt.param_groups for p in group["params"]]
    momentum = [opt.state[p].get("momentum_buffer") if p in opt.state else None for p in params]
    buffers = dict(module.named_buffers())
    tensors = _plain(module)
    masks = {n: buffers[n + "_mask"].clone() for n in WEIGHTS if n + "_mask" in buffers}
    return {
        "tensors": tensors,
        "effective": {n: tensors[n] * masks[n] if n in masks else tensors[n] for n in WEIGHTS},
        "weights": {n: module.get_submodule(n.split(".")[0]).weight.detach().clone() for n in WEIGHTS},
        "masks": masks,
        "momentum": [None if m is None else m.clone() for m in momentum],
        "lr": opt.param_groups[0]["lr"],
        "sched_lr": trainer.lr_scheduler_configs[0].scheduler.get_last_lr(),
        "rng": torch.get_rng_state(),
    }


class Probe(Callback):
    """Records state at every epoch start, at every epoch end, or once an epoch's event is through: at the
    next epoch's start or the fit's end (after the callbacks before it)."""

    def __init__(self, hook: str) -> None:
        self.hook = hook
        self.seen: dict[int, dict] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.hook == "start":
            self.seen[trainer.current_epoch] = _capture(trainer, pl_module)
        if self.hook == "through" and trainer.current_epoch > 0:
            self.seen[trainer.current_epoch - 1] = _capture(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.hook == "end":
            self.seen[trainer.current_epoch] = _capture(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.hook == "through":
            self.seen[trainer.current_epoch - 1] = _capture(trainer, pl_module)


def _trainer(epochs: int, callbacks: list, root: Path, **kwargs) -> Trainer:
    options = {
        "max_epochs": epochs,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "deterministic": True,
        "default_root_dir": root,
        "accelerator": "cpu",
        **kwargs,
    }
    return Trainer(callbacks=callbacks, **options)


def _fit(callback: PruningCallback, tmp_path: Path, *, epochs: int, model: Tiny | None = None, **kwargs):
    model = model or _model()
    start, before, after = Probe("start"), Probe("end"), Probe("through")
    trainer = _trainer(epochs, [before, callback, start, after], tmp_path, **kwargs)
    trainer.fit(model, _data())
    return model, start, before, after


def _expected_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Global L1: keep the ``n - round(s * n)`` largest magnitudes of the effective weights."""
    flat = torch.cat([weights[n].abs().reshape(-1) for n in WEIGHTS])
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.topk(flat, flat.numel() - round(sparsity * flat.numel())).indices] = True
    sizes = [weights[n].numel() for n in WEIGHTS]
    return {n: m.view_as(weights[n]) for n, m in zip(WEIGHTS, keep.split(sizes))}


def _assert_masks(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert actual[name].dtype == torch.bool
        assert torch.equal(actual[name], expected[name]), name


def _assert_survivors_equal(state: dict, reference: dict[str, torch.Tensor]) -> None:
    """Survivors equal ``reference``, ``module.weight`` shows zeros where pruned, other tensors equal."""
    for name, value in reference.items():
        if name in WEIGHTS:
            mask = state["masks"][name]
            assert torch.equal(state["tensors"][name][mask], value[mask]), name
            assert torch.equal(state["weights"][name], value * mask), name
        else:
            assert torch.equal(state["tensors"][name], value), name


# ---------------------------------------------------------------------------- rewind to k=0


def test_rewind_to_initialisation(tmp_path) -> None:
    model = _model()
    init = _plain(model)
    callback = PruningCallback(
        scope="global", schedule=Explicit({0: 0.5, 1: 0.75}), rewind=Rewind(epoch=0), make_permanent=False
    )
    _, start, before, after = _fit(callback, tmp_path, epochs=2, model=model)

    # Before the first event the model trained, momentum built up and the LR was stepped, so a
    # rewind that did nothing could not pass the checks below.
    assert not torch.equal(before.seen[0]["tensors"]["fc1.weight"], init["fc1.weight"])
    assert not torch.equal(before.seen[0]["tensors"]["bn.running_mean"], init["bn.running_mean"])
    assert all(m is not None for m in before.seen[0]["momentum"])
    assert before.seen[0]["lr"] == pytest.approx(LR / 2)

    for epoch, sparsity in ((0, 0.5), (1, 0.75)):
        state = after.seen[epoch]
        _assert_masks(state["masks"], _expected_masks(before.seen[epoch]["effective"], sparsity))
        assert sum(int((~m).sum()) for m in state["masks"].values()) == round(sparsity * TOTAL)
        _assert_survivors_equal(state, init)
        assert all(m is None for m in state["momentum"]), "SGD had no momentum state at initialisation"
        assert state["lr"] == LR
        assert state["sched_lr"] == [LR]

    # ... and the next epoch starts exactly as epoch 0 did.
    assert start.seen[0]["lr"] == start.seen[1]["lr"] == LR
    for name, value in after.seen[0]["tensors"].items():
        assert torch.equal(start.seen[1]["tensors"][name], value), name
    assert all(m is None for m in start.seen[1]["momentum"])


# ---------------------------------------------------------------------------- rewind to k=1


def test_rewind_to_epoch_one_restores_weights_momentum_and_lr(tmp_path) -> None:
    callback = PruningCallback(
        scope="global", schedule=Explicit({1: 0.5, 2: 0.75}), rewind=Rewind(epoch=1), make_permanent=False
    )
    _, start, before, after = _fit(callback, tmp_path, epochs=3)
    snap = start.seen[1]
    assert snap["lr"] == pytest.approx(LR / 2)
    assert all(m is not None for m in snap["momentum"])
    assert not after.seen[0]["masks"], "no event after epoch 0"

    for epoch, sparsity in ((1, 0.5), (2, 0.75)):
        assert before.seen[epoch]["lr"] == pytest.approx(snap["lr"] / 2), "the LR was stepped before the event"
        state = after.seen[epoch]
        _assert_masks(state["masks"], _expected_masks(before.seen[epoch]["effective"], sparsity))
        _assert_survivors_equal(state, snap["tensors"])
        assert len(state["momentum"]) == len(snap["momentum"])
        for got, want in zip(state["momentum"], snap["momentum"]):
            assert torch.equal(got, want)
        assert state["lr"] == snap["lr"]
        assert state["sched_lr"] == snap["sched_lr"]
    assert start.seen[2]["lr"] == snap["lr"], "epoch 2 starts with the LR of epoch 1"


# ---------------------------------------------------------------------------- random-reinit control


def _control(tmp_path: Path, seed: int, reinit: bool = True):
    callback = PruningCallback(
        scope="global",
        schedule=Explicit({0: 0.5}),
        rewind=Rewind(epoch=0, reinit=reinit),
        seed=seed,
        make_permanent=False,
    )
    _, _, before, after = _fit(callback, tmp_path, epochs=1)
    return before.seen[0], after.seen[0]


def test_reinit_control(tmp_path) -> None:
    init = _plain(_model())
    _, ticket = _control(tmp_path, seed=7, reinit=False)
    before, control = _control(tmp_path, seed=7)
    _, again = _control(tmp_path, seed=7)
    _, other = _control(tmp_path, seed=8)

    _assert_masks(control["masks"], _expected_masks(before["effective"], 0.5))
    _assert_masks(control["masks"], ticket["masks"])
    assert torch.equal(before["rng"], control["rng"]), "the global RNG is untouched by the event"
    for name in WEIGHTS:
        mask = control["masks"][name]
        survivors = control["tensors"][name][mask]
        assert (survivors != init[name][mask]).float().mean() > 0.95, "survivors are re-sampled, not rewound"
        assert (survivors != before["tensors"][name][mask]).float().mean() > 0.95
        assert survivors.abs().max() <= 1 / math.sqrt(FAN_IN[name]), "drawn like nn.Linear.reset_parameters"
        assert torch.equal(control["weights"][name][~mask], torch.zeros(int((~mask).sum())))
        assert torch.equal(control["weights"][name], control["tensors"][name] * mask)
        assert torch.equal(again["tensors"][name], control["tensors"][name]), "same seed, same values"
        assert (other["tensors"][name][mask] != survivors).float().mean() > 0.95, "another seed, other values"
    assert all(m is None for m in control["momentum"]) and control["lr"] == LR, "optimizer and LR still rewound"
    others = sorted(set(control["tensors"]) - set(WEIGHTS))
    assert others, "the model holds tensors that are not targets"
    for name in others:  # the biases: not targets, so rewound (a pretrained backbone is not re-drawn)
        assert torch.equal(control["tensors"][name], init[name]), name


@pytest.mark.parametrize("order", ["fc1 first", "fc2 first"])
def test_two_controls_each_re_sample_their_targets(tmp_path, order: str) -> None:
    """Two callbacks with `reinit=True` (per-layer rates): the second one's restore keeps what the first one
    drew, and its reset does not draw the first one's targets anew; each target ends as with its callback alone."""

    def control(target: str, seed: int) -> PruningCallback:
        rewind = Rewind(epoch=0, reinit=True)
        return PruningCallback(targets=[target], schedule=Explicit({1: 0.5}), rewind=rewind, seed=seed)

    def fit(*callbacks: PruningCallback) -> dict[str, torch.Tensor]:
        model = _model()
        _trainer(2, list(callbacks), tmp_path).fit(model, _data())
        return _plain(model)

    alone = {"fc1.weight": fit(control("fc1.weight", 3)), "fc2.weight": fit(control("fc2.weight", 4))}
    pair = [control("fc1.weight", 3), control("fc2.weight", 4)]
    together = fit(*(pair if order == "fc1 first" else pair[::-1]))
    init = _plain(_model())
    for name in ("fc1.weight", "fc2.weight"):
        assert torch.equal(together[name], alone[name][name]), name
        assert not torch.equal(together[name], init[name] * (together[name] != 0)), f"{name} re-sampled"
    for name in ("fc1.bias", "fc2.bias"):
        assert torch.equal(together[name], init[name]), f"{name} rewound"


@pytest.mark.parametrize("other", ["control", "ticket"])
def test_a_control_that_does_not_rewind_keeps_its_draw_when_another_callback_rewinds(tmp_path, other: str) -> None:
    """The other callback's rewind after epoch 2 sets the model back to its snapshot; the control's targets go back
    to the control's own last draw (its equivalent of the initialisation), not to the snapshot's values."""
    draws = []

    class Draws(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            pruned = hasattr(pl_module.fc1, "weight_orig")
            draws.append(pl_module.fc1.weight_orig.detach().clone() if pruned else None)

    control = PruningCallback(
        targets=["fc1.weight"], schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0, reinit=True), seed=3
    )
    rewind = Rewind(epoch=0, reinit=other == "control")
    second = PruningCallback(targets=["fc2.weight"], schedule=Explicit({1: 0.5, 2: 0.7}), rewind=rewind, seed=4)
    model = _model()
    init = _plain(model)["fc1.weight"]
    _trainer(4, [control, second, Draws()], tmp_path).fit(model, _data())
    assert draws[2] is not None and not torch.equal(draws[2], init), "epoch 2 starts from the control's draw"
    assert torch.equal(draws[3], draws[2]), "epoch 3 starts from it again"


def test_a_checkpoint_of_controls_that_re_sampled_every_tensor_is_refused(tmp_path) -> None:
    """Earlier versions' `reinit=True` re-sampled the whole model; resuming their rounds would mix two experiments."""
    callback = PruningCallback(scope="global", schedule=Explicit({1: 0.3, 3: 0.5}), rewind=Rewind(epoch=0, reinit=True))
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    _trainer(2, [callback, saver], tmp_path, enable_checkpointing=True).fit(_model(), _data())
    (path,) = (tmp_path / "ckpt").glob("epoch=1-*.ckpt")
    checkpoint = torch.load(path, weights_only=False)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("PruningCallback")]
    assert state["round"] == 1
    del state["rewind"]["resampled"]
    torch.save(checkpoint, path)
    again = PruningCallback(scope="global", schedule=Explicit({1: 0.3, 3: 0.5}), rewind=Rewind(epoch=0, reinit=True))
    model = _model()
    before = {n: v.clone() for n, v in _plain(model).items()}
    with pytest.raises(ValueError, match=r"re-sampled every tensor of the model"):
        _trainer(4, [again], tmp_path).fit(model, _data(), ckpt_path=path)
    assert all(torch.equal(before[n], v) for n, v in _plain(model).items())


def test_callbacks_that_rewind_to_different_epochs_after_one_epoch_are_refused(tmp_path) -> None:
    """Every rewind restores the whole model: which one won would depend on the callbacks' order. Rewinds after
    different epochs do not meet, and either order gives the same fit."""
    first = PruningCallback(targets=["fc1.weight"], schedule=Explicit({2: 0.5}), rewind=Rewind(epoch=1))
    second = PruningCallback(targets=["fc2.weight"], schedule=Explicit({2: 0.5}), rewind=Rewind(epoch=0))
    model = _model()
    before = {n: v.clone() for n, v in _plain(model).items()}
    with pytest.raises(ValueError, match=r"rewind to different epochs \(1 and 0\) after the same epoch's events"):
        _trainer(3, [first, second], tmp_path).fit(model, _data())
    assert all(torch.equal(before[n], v) for n, v in _plain(model).items())
    fits = []
    for order in ([0, 1], [1, 0]):
        pair = [
            PruningCallback(targets=["fc1.weight"], schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0)),
            PruningCallback(targets=["fc2.weight"], schedule=Explicit({3: 0.5}), rewind=Rewind(epoch=2)),
        ]
        model = _model()
        _trainer(5, [pair[i] for i in order], tmp_path).fit(model, _data())
        fits.append(_plain(model))
    assert all(torch.equal(fits[0][n], fits[1][n]) for n in fits[0])


def test_reinitialize_keeps_parameters_in_place() -> None:
    """The re-sampling makes each pruned tensor plain for ``reset_parameters`` and back, in its place."""
    from lightning_prune import reparam
    from lightning_prune.lottery import reinitialize

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    mask = torch.rand(4, 3, generator=torch.Generator().manual_seed(0)) > 0.5
    reparam.apply(model[0], "weight", mask)
    names = [name for name, _ in model.named_parameters()]
    before = model[0].weight_orig.detach().clone()
    reinitialize(model, seed=3)
    assert [name for name, _ in model.named_parameters()] == names
    assert not torch.equal(model[0].weight_orig, before)
    assert torch.equal(model[0].weight == 0, ~mask | (model[0].weight_orig == 0))


def test_reinitialize_runs_the_attention_reset_and_submodules_first() -> None:
    """``nn.MultiheadAttention`` resets its ``in_proj_weight`` in ``_reset_parameters`` and zeroes
    ``out_proj.bias`` after ``out_proj`` drew it: construction's order, which a re-sampling keeps."""
    from lightning_prune.lottery import reinitialize

    attention = nn.MultiheadAttention(8, 2)
    before = attention.in_proj_weight.detach().clone()
    with torch.no_grad():
        attention.out_proj.bias.fill_(1.0)
    reinitialize(attention, seed=0)
    assert (attention.in_proj_weight != before).all()
    assert torch.equal(attention.out_proj.bias, torch.zeros(8))


class _ZeroInitBranch(nn.Module):
    """A residual branch whose own reset zeroes its child's weight (after the child drew it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.fc.weight)


def test_reinitialize_lets_a_module_reset_its_childrens_pruned_tensors() -> None:
    """A parent's reset writes the pruned tensor itself (`weight_orig`), not the masked copy a
    forward recomputes; as for `out_proj.bias` of an attention that prunes it."""
    from lightning_prune import reparam
    from lightning_prune.lottery import reinitialize

    branch, attention = _ZeroInitBranch(), nn.MultiheadAttention(8, 2)
    with torch.no_grad():
        branch.fc.weight.fill_(1.0)
        attention.out_proj.bias.fill_(1.0)
    reparam.apply(branch.fc, "weight", torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) > 0.5)
    reparam.apply(attention.out_proj, "bias", torch.arange(8) % 2 == 0)
    reinitialize(branch, seed=0)
    reinitialize(attention, seed=0)
    assert torch.equal(branch.fc.weight_orig, torch.zeros(4, 4)) and torch.equal(branch.fc.weight, torch.zeros(4, 4))
    assert torch.equal(attention.out_proj.bias_orig, torch.zeros(8))


class _Probed(nn.Module):
    """A data-dependent initialisation: its reset runs a forward through its pruned child."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("probe", torch.ones(2, 4))
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.fc.weight.div_(self(self.probe).std())


def test_reinitialize_runs_a_reset_that_calls_forward_through_a_pruned_child() -> None:
    from lightning_prune import reparam
    from lightning_prune.lottery import reinitialize

    model = _Probed()
    mask = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) > 0.5
    reparam.apply(model.fc, "weight", mask)
    before = model.fc.weight_orig.detach().clone()
    reinitialize(model, seed=0)
    assert not torch.equal(model.fc.weight_orig, before)
    assert torch.equal(model.fc.weight, model.fc.weight_orig * mask)


def test_reinit_refuses_targets_no_reset_parameters_covers(tmp_path) -> None:
    class WithBare(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) @ self.scale

    torch.manual_seed(0)
    model = WithBare()
    before = _plain(model)
    callback = PruningCallback(targets=["*weight", "scale"], schedule=0.5, rewind=Rewind(epoch=0, reinit=True))
    with pytest.raises(ValueError, match=r"no module that holds targets \['scale'\] has one"):
        _trainer(1, [callback], tmp_path).fit(model, _data())
    for name, value in _plain(model).items():
        assert torch.equal(value, before[name]), name
    # left out, the rest re-samples
    _trainer(
        1,
        [
            PruningCallback(
                exclude=["scale"], targets=["*weight", "scale"], schedule=0.5, rewind=Rewind(epoch=0, reinit=True)
            )
        ],
        tmp_path,
    ).fit(WithBare(), _data())


def test_reinit_seed_is_no_seed_a_run_builds_its_model_with() -> None:
    """Under ``seed + round`` the control of a run seeded 0 re-sampled, in round 1, the very
    initialisation of the run seeded 1."""
    from lightning_prune.lottery import reinit_seed, reinitialize

    control = _model(seed=0)
    reinitialize(control, reinit_seed(0, 1))
    other_run = _model(seed=1)
    assert not torch.equal(control.fc1.weight, other_run.fc1.weight)
    assert reinit_seed(0, 1) != reinit_seed(1, 0) and reinit_seed(-1, 2) == reinit_seed(2**64 - 1, 2)


# ---------------------------------------------------------------------------- two callbacks, checkpoints at the event


@pytest.mark.parametrize("first_rewinds", [True, False], ids=["rewinding-first", "rewinding-second"])
def test_a_second_callback_ranks_the_trained_weights(tmp_path, first_rewinds: bool) -> None:
    """Per-layer rates take two callbacks; the one that rewinds must not hand the other the rewound weights."""
    rewinding = PruningCallback(targets=["fc1.weight"], schedule=0.5, rewind=Rewind(epoch=0), make_permanent=False)
    other = PruningCallback(targets=["fc2.weight"], schedule=0.25, make_permanent=False)
    before, through = Probe("end"), Probe("through")
    pruning = [rewinding, other] if first_rewinds else [other, rewinding]
    model = _model()
    init = _plain(model)
    _trainer(1, [before, *pruning, through], tmp_path).fit(model, _data())
    trained = before.seen[0]["tensors"]
    for name, sparsity in (("fc1.weight", 0.5), ("fc2.weight", 0.25)):
        expected = trained[name].abs().reshape(-1).topk(round((1 - sparsity) * trained[name].numel())).indices
        mask = through.seen[0]["masks"][name].reshape(-1)
        assert sorted(mask.nonzero().squeeze(1).tolist()) == sorted(expected.tolist()), name
    _assert_survivors_equal(through.seen[0], init)  # every weight rewound, both masks applied


def test_a_callback_made_permanent_before_the_rewinding_one_keeps_its_zeros(tmp_path) -> None:
    other = PruningCallback(targets=["fc2.weight"], schedule=Explicit({1: 0.5}))
    rewinding = PruningCallback(targets=["fc1.weight"], schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0))
    model = _model()
    _trainer(2, [other, rewinding], tmp_path).fit(model, _data())
    assert int((model.fc2.weight == 0).sum()) == round(0.5 * 48)
    assert int((model.fc1.weight == 0).sum()) == round(0.5 * 128)


@pytest.mark.parametrize(
    "kwargs",
    [{"check_val_every_n_epoch": 2}, {"val_check_interval": 0.5}],
    ids=["validation-every-other-epoch", "validation-twice-an-epoch"],
)
def test_no_warning_where_monitored_checkpoints_are_saved_at_validation_end(tmp_path, kwargs) -> None:
    """Lightning then saves them at validation end, before the events: they hold the trained weights."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss")
    callback = PruningCallback(schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(2, [callback, checkpoint], tmp_path, enable_checkpointing=True, **kwargs).fit(
            _model(cls=TinyVal), _data(), _data()
        )
    assert not [w for w in caught if "holds the rewound weights" in str(w.message)]


def test_monitored_checkpoints_without_validation_warn_and_a_time_interval_does_not_fail(tmp_path) -> None:
    callback = PruningCallback(schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0))
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "a", monitor="train_loss")
    trainer = _trainer(1, [callback, checkpoint], tmp_path, enable_checkpointing=True, val_check_interval=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_model(), _data())  # no validation at all: saved at the epoch's end
    assert [w for w in caught if "holds the rewound weights" in str(w.message)]
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "c", monitor="train_loss")
    trainer = _trainer(1, [callback, checkpoint], tmp_path, enable_checkpointing=True, val_check_interval=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_model(cls=TinyVal), _data())  # a `validation_step`, but no loader for it
    assert [w for w in caught if "holds the rewound weights" in str(w.message)]
    if lightning_at_least("2.6"):  # validation at a time interval
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss")
        trainer = _trainer(
            1, [callback, checkpoint], tmp_path, enable_checkpointing=True, val_check_interval="00:00:00:10"
        )
        trainer.fit(_model(cls=TinyVal), _data(), _data())


def test_checkpoint_at_the_event_holds_the_rewound_weights_and_a_warning_says_so(tmp_path) -> None:
    """A checkpoint saved at the end of an epoch with an event (the best one by a validation metric, say) is
    written after the rewind: it holds the rewound weights with the new masks, under the trained weights'
    score. The fit warns where a checkpoint monitors a metric."""
    model = _model(cls=TinyVal)
    init = _plain(model)
    through = Probe("through")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=-1)
    callback = PruningCallback(
        scope="global", schedule=Explicit({0: 0.5, 1: 0.75}), rewind=Rewind(epoch=0), make_permanent=False
    )
    trainer = _trainer(2, [callback, through, checkpoint], tmp_path, enable_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, _data(), _data())
    assert any("holds the rewound weights" in str(w.message) for w in caught)
    for epoch in (0, 1):
        (path,) = (tmp_path / "ckpt").glob(f"epoch={epoch}-*.ckpt")
        saved = torch.load(path, weights_only=False)
        masks = through.seen[epoch]["masks"]
        for name in WEIGHTS:
            assert torch.equal(saved["state_dict"][name], init[name] * masks[name]), (epoch, name)
        assert not saved["callbacks"][callback.state_key]["rewind_pending"]


# ---------------------------------------------------------------------------- events that change nothing


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(0.5, id="same-target"),
        pytest.param(0.502, id="target-rounding-to-same-count"),
    ],
)
def test_event_already_met_changes_nothing(tmp_path, second: float) -> None:
    assert round(second * TOTAL) == round(0.5 * TOTAL)
    logger = CSVLogger(tmp_path, name="csv")
    callback = PruningCallback(
        scope="global", schedule=Explicit({0: 0.5, 1: second}), rewind=Rewind(epoch=0), make_permanent=False
    )
    _, _, before, after = _fit(callback, tmp_path, epochs=2, logger=logger)
    state, previous = after.seen[1], before.seen[1]
    _assert_masks(state["masks"], after.seen[0]["masks"])
    for name, value in previous["tensors"].items():
        assert torch.equal(state["tensors"][name], value), name
    assert state["lr"] == previous["lr"] == pytest.approx(LR / 2)
    assert all(m is not None for m in state["momentum"])
    for got, want in zip(state["momentum"], previous["momentum"]):
        assert torch.equal(got, want)
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rounds = [float(r["lottery/round"]) for r in csv.DictReader(f) if r.get("lottery/round")]
    assert rounds == [1.0, 1.0]


class TinyPreparedAtTrainStart(Tiny):
    def on_train_start(self) -> None:  # Lightning calls it after the callbacks' `on_train_start`
        with torch.no_grad():
            self.fc2.bias.fill_(1.0)


def test_rewind_to_epoch_zero_sees_what_train_start_hooks_did(tmp_path) -> None:
    """The snapshot is the state at the start of epoch 0, after every `on_train_start` hook."""
    callback = PruningCallback(schedule=Explicit({0: 0.5}), rewind=Rewind(epoch=0), make_permanent=False)
    model, _, _, _ = _fit(callback, tmp_path, epochs=1, model=_model(cls=TinyPreparedAtTrainStart))
    assert torch.equal(model.fc2.bias.detach(), torch.ones(3))


def test_round_end_metrics_come_from_the_rounds_own_validation(tmp_path) -> None:
    """Validation after epochs 1 and 3 only: the event after epoch 2 logs no round-end metrics, since
    Lightning's `callback_metrics` still hold epoch 1's, measured before that round's rewind."""
    logger = CSVLogger(tmp_path, name="csv")
    callback = PruningCallback(
        scope="global", schedule=Explicit({1: 0.3, 2: 0.5}), rewind=Rewind(epoch=0), make_permanent=False
    )
    trainer = _trainer(4, [callback], tmp_path, logger=logger, check_val_every_n_epoch=2)
    trainer.fit(_model(cls=TinyVal), _data(), _data())
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lottery/round")]
    assert [float(r["lottery/round"]) for r in rows] == [1.0, 2.0]
    assert rows[0]["lottery/round_end/val_loss"] != ""
    assert rows[1]["lottery/round_end/val_loss"] == ""


class _SaverAtValidationEnd(Callback):
    """Saves ``epoch={epoch}.ckpt`` at validation end; not a ``ModelCheckpoint``, which Lightning moves last."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            trainer.save_checkpoint(self.directory / f"epoch={trainer.current_epoch}.ckpt")


@pytest.mark.parametrize("saver_first", [False, True], ids=["model-checkpoint", "a-callback-listed-first"])
def test_round_end_metrics_survive_a_resume_from_the_checkpoint_of_the_rounds_validation(
    tmp_path, saver_first: bool
) -> None:
    """The checkpoint saved at validation end, before the event: the resumed run logs the round's
    validation as the uninterrupted one does, though Lightning restores no `callback_metrics`; also when
    the checkpoint is saved before this callback has seen that validation end."""

    def fit(root: Path, epochs: int, ckpt_path: Path | None = None) -> list[tuple[str, str, str]]:
        logger = CSVLogger(root, name="csv")
        callback = PruningCallback(schedule=Explicit({0: 0.3, 1: 0.5, 2: 0.7}), rewind=Rewind(epoch=0))
        if saver_first:
            callbacks = [_SaverAtValidationEnd(root / "ckpt"), callback]
        else:
            checkpoints = ModelCheckpoint(
                dirpath=root / "ckpt", filename="{epoch}", save_top_k=-1, save_on_train_epoch_end=False
            )
            callbacks = [callback, checkpoints]
        trainer = _trainer(epochs, callbacks, root, logger=logger, enable_checkpointing=not saver_first)
        trainer.fit(_model(cls=TinyVal), _data(), _data(), ckpt_path=ckpt_path)
        logger.save()
        with open(Path(logger.log_dir) / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("lottery/round")]
        return [(r["step"], r["lottery/round"], r["lottery/round_end/val_loss"]) for r in rows]

    uninterrupted = fit(tmp_path / "a", 3)
    assert len(uninterrupted) == 3 and all(value for _, _, value in uninterrupted)
    fit(tmp_path / "b", 2)
    assert fit(tmp_path / "c", 3, tmp_path / "b" / "ckpt" / "epoch=1.ckpt") == uninterrupted[1:]


class TinyValSometimes(TinyVal):
    """Logs `val_acc` in even epochs only, `val_loss` in every one."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        if self.current_epoch % 2 == 0:
            x, y = batch
            self.log("val_acc", (self(x).argmax(1) == y).float().mean())


def test_round_end_metrics_are_those_of_the_rounds_validation_key_by_key(tmp_path) -> None:
    """`callback_metrics` keeps `val_acc` from epoch 0 through epoch 1's validation, which did not measure it:
    round 2 logs only its own `val_loss`."""
    logger = CSVLogger(tmp_path, name="csv")
    callback = PruningCallback(schedule=Explicit({0: 0.3, 1: 0.5, 2: 0.7}), rewind=Rewind(epoch=0))
    _trainer(3, [callback], tmp_path, logger=logger).fit(_model(cls=TinyValSometimes), _data(), _data())
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lottery/round")]
    assert [bool(r["lottery/round_end/val_loss"]) for r in rows] == [True, True, True]
    assert [bool(r["lottery/round_end/val_acc"]) for r in rows] == [True, False, True]


def test_round_end_metrics_of_a_resumed_fit_never_come_from_a_validation_after_the_fit(tmp_path) -> None:
    """`trainer.validate()` after a fit, then a checkpoint: the resumed fit's event after epoch 4, which
    runs no validation of its own, logs no round-end metrics."""
    callback = PruningCallback(schedule=Explicit({e: 0.1 * (e + 1) for e in range(5)}), rewind=Rewind(epoch=0))
    trainer = _trainer(4, [callback], tmp_path / "a", check_val_every_n_epoch=2)
    model = _model(cls=TinyVal)
    trainer.fit(model, _data(), _data())
    trainer.validate(model, _data())
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    logger = CSVLogger(tmp_path, name="csv")
    resumed = PruningCallback(schedule=Explicit({e: 0.1 * (e + 1) for e in range(5)}), rewind=Rewind(epoch=0))
    trainer = _trainer(5, [resumed], tmp_path / "b", logger=logger, check_val_every_n_epoch=2)
    trainer.fit(_model(cls=TinyVal), _data(), _data(), ckpt_path=tmp_path / "after.ckpt")
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lottery/round")]
    assert [float(r["lottery/round"]) for r in rows] == [5.0]
    assert not rows[0].get("lottery/round_end/val_loss")


@pytest.mark.parametrize("before", ["validate", "another-fit"])
def test_round_end_metrics_never_come_from_a_validation_outside_the_fit(tmp_path, before: str) -> None:
    """A baseline `trainer.validate()` before the fit, or an earlier fit of the same callback: epoch 0 of
    this fit has no validation of its own, so its event logs no round-end metrics."""
    callback = PruningCallback(schedule=Explicit({0: 0.3}), rewind=Rewind(epoch=0))
    if before == "validate":
        trainer = _trainer(1, [callback], tmp_path / "a", logger=CSVLogger(tmp_path, name="a"))
        trainer.validate(_model(cls=TinyVal), _data())
    else:
        _trainer(1, [callback], tmp_path / "b").fit(_model(cls=TinyVal), _data(), _data())
    logger = CSVLogger(tmp_path, name="csv")
    trainer = _trainer(2, [callback], tmp_path / "c", logger=logger, check_val_every_n_epoch=2)
    trainer.fit(_model(cls=TinyVal), _data(), _data())
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lottery/round")]
    assert [float(r["lottery/round"]) for r in rows] == [1.0]
    assert not rows[0].get("lottery/round_end/val_loss")


def test_round_tags_of_one_callback_among_several_carry_its_name(tmp_path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    rewinding = PruningCallback(
        targets=["fc1.weight"], schedule=Explicit({1: 0.3}), rewind=Rewind(epoch=0), make_permanent=False
    )
    other = PruningCallback(method="random_unstructured", targets=["fc2.weight"], schedule=Explicit({1: 0.5}), seed=0)
    trainer = _trainer(2, [rewinding, other], tmp_path, logger=logger)
    trainer.fit(_model(cls=TinyVal), _data(), _data())
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lottery/l1_unstructured/round")]
    assert [float(r["lottery/l1_unstructured/round"]) for r in rows] == [1.0]
    assert rows[0]["lottery/l1_unstructured/round_end/val_loss"] != ""
    assert "lottery/round" not in rows[0]


# ---------------------------------------------------------------------------- bad schedules


@pytest.mark.parametrize(
    ("schedule", "epoch", "first"),
    [
        pytest.param(Geometric(rate=0.2), 1, 0, id="geometric-from-0-rewind-1"),
        pytest.param(Explicit({1: 0.5, 3: 0.7}), 2, 1, id="explicit-rewind-between-events"),
        pytest.param(Constant(0.5, start_epoch=2), 3, 2, id="constant-rewind-after-event"),
    ],
)
def test_schedule_pruning_before_rewind_epoch_fails_at_setup(tmp_path, schedule, epoch: int, first: int) -> None:
    model = _model()
    init = _plain(model)
    callback = PruningCallback(schedule=schedule, rewind=Rewind(epoch=epoch), make_permanent=False)
    trainer = _trainer(epoch + 2, [callback], tmp_path)
    with pytest.raises(ValueError, match=rf"Rewind\(epoch={epoch}\).*prunes after epoch {first}\b"):
        trainer.fit(model, _data())
    assert trainer.global_step == 0
    assert not [n for n, _ in model.named_buffers() if n.endswith("_mask")]
    now = _plain(model)
    assert sorted(now) == sorted(init)
    for name, value in init.items():
        assert torch.equal(now[name], value), name


def test_a_ramp_whose_first_event_prunes_nothing_may_start_before_the_rewind_epoch(tmp_path) -> None:
    schedule = Polynomial(final_sparsity=0.75, start_epoch=0, end_epoch=2)
    assert schedule.sparsity_at(0) == 0.0
    before, through = Probe("end"), Probe("through")
    callback = PruningCallback(scope="global", schedule=schedule, rewind=Rewind(epoch=1), make_permanent=False)
    _trainer(3, [before, callback, through], tmp_path).fit(_model(), _data())
    assert not through.seen[0]["masks"], "the event after epoch 0 pruned nothing and rewound nothing"
    start_of_1 = before.seen[0]["tensors"]  # nothing trains between the end of epoch 0 and the start of epoch 1
    for epoch in (1, 2):
        assert sum(int((~m).sum()) for m in through.seen[epoch]["masks"].values()) > 0
        _assert_survivors_equal(through.seen[epoch], start_of_1)


def test_a_resumed_fit_warns_for_the_round_its_checkpoint_started(tmp_path) -> None:
    """The event after the first fit's last epoch left its round to the resumed fit."""

    def fit(epochs: int, **kwargs) -> list[str]:
        torch.manual_seed(0)
        callback = PruningCallback(scope="global", schedule=Explicit({1: 0.3, 2: 0.5}), rewind=Rewind(epoch=0))
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
        trainer = _trainer(epochs, [callback, checkpoint], tmp_path, enable_checkpointing=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(EveryOtherEpoch(), _data(), **kwargs)
        return [str(w.message) for w in caught if "steps every 2 epochs" in str(w.message)]

    assert fit(3) == []  # its last event ends the fit: no round of its follows
    (path,) = (tmp_path / "ckpt").glob("epoch=2-*.ckpt")
    (message,) = fit(6, ckpt_path=path)
    assert "events after epochs [2]" in message


class EveryOtherEpoch(Tiny):
    """``StepLR`` stepped by Lightning every second epoch (``frequency=2``)."""

    def configure_optimizers(self):
        config = super().configure_optimizers()
        config["lr_scheduler"]["frequency"] = 2
        return config


@pytest.mark.parametrize(
    ("events", "off", "epochs"),
    [((1, 3), [], 7), ((1, 2), [2], 6), ((1, 4), [], 5)],
    ids=["aligned", "off-by-one", "last-event-ends-the-fit"],
)
def test_rounds_replay_a_scheduler_stepped_every_other_epoch_or_warn(tmp_path, events, off, epochs) -> None:
    torch.manual_seed(0)
    model = EveryOtherEpoch()
    start = Probe("start")
    callback = PruningCallback(
        scope="global", schedule=Explicit(dict(zip(events, (0.3, 0.5)))), rewind=Rewind(epoch=0), make_permanent=False
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(epochs, [callback, start], tmp_path).fit(model, _data())
    messages = [str(w.message) for w in caught if "steps every 2 epochs" in str(w.message)]
    assert len(messages) == (1 if off else 0)
    if off:
        assert f"events after epochs {off}" in messages[0]
    if off or epochs != 7:
        return
    lrs = [start.seen[e]["lr"] for e in sorted(start.seen)]
    # epochs 0-1 at LR, then rounds of 2 epochs (2-3, 4-5) that replay them, then epoch 6 as epoch 2 would be
    assert lrs == [LR, LR, LR, LR, LR, LR, LR / 2]


class OnPlateau(TinyVal):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=10.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}


def _assert_equal(a: object, b: object, path: str = "") -> None:
    """Nested dicts, lists and tensors, equal value for value (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            _assert_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


class LookAtStates(Callback):
    """Records the optimizers' and LR schedulers' states at every epoch start (after the callbacks before it)."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.seen[trainer.current_epoch] = (
            [copy.deepcopy(o.state_dict()) for o in trainer.optimizers],
            [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs],
        )


def test_a_plateau_scheduler_starts_each_round_as_at_the_snapshot(tmp_path) -> None:
    """Lightning steps ``ReduceLROnPlateau`` after ``on_train_epoch_end``, where the rewind ran: the next epoch's
    start restores its state again."""
    look = LookAtStates()
    torch.manual_seed(0)
    callback = PruningCallback(scope="global", schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0))
    _trainer(3, [callback, look], tmp_path).fit(OnPlateau(), _data(), _data())
    assert look.seen[1][0][0]["param_groups"][0]["lr"] == LR / 2, "stepped on a plateau after epoch 0 (no 10x gain)"
    (opt_0, (plateau_0,)), (opt_2, (plateau_2,)) = look.seen[0], look.seen[2]
    assert plateau_2 == plateau_0 and opt_2 == opt_0  # no state at epoch 0's start: no momentum yet


@pytest.mark.parametrize(
    ("first", "interval", "expected"), [(True, "epoch", 1), (True, None, 1), (True, "step", 0), (False, "epoch", 0)]
)
def test_a_learning_rate_monitor_listed_first_is_told_it_logged_before_the_restore(
    tmp_path, first: bool, interval: str | None, expected: int
) -> None:
    """The plateau halves the LR after every epoch, the rewind's too: a monitor that logs at epoch start, listed
    first, logs the halved LR that the round does not train with. One that logs at each step logs the restored."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    callback = PruningCallback(scope="global", schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0))
    monitor = LearningRateMonitor(logging_interval=interval)
    callbacks = [monitor, callback] if first else [callback, monitor]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(3, callbacks, tmp_path, logger=CSVLogger(tmp_path)).fit(OnPlateau(), _data(), _data())
    messages = [str(w.message) for w in caught if "list LearningRateMonitor after PruningCallback" in str(w.message)]
    assert len(messages) == expected
    assert all("at the start of epoch 2" in m for m in messages)


class StepsAtEpochEnd(Tiny):
    """Manual optimization that accumulates the epoch's gradients and steps once, in `on_train_epoch_end`: after
    the rewind, with no scheduler to show it."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.manual_backward(F.cross_entropy(self(x), y))

    def on_train_epoch_end(self) -> None:
        optimizer = self.optimizers()
        optimizer.step()
        optimizer.zero_grad()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)


def test_an_optimizer_step_after_the_rewind_is_taken_back_at_the_rounds_start(tmp_path) -> None:
    look = LookAtStates()
    torch.manual_seed(0)
    callback = PruningCallback(scope="global", schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0))
    _trainer(3, [callback, look], tmp_path).fit(StepsAtEpochEnd(), _data())
    assert look.seen[1][0][0]["state"], "stepped after epoch 0"
    _assert_equal(look.seen[2], look.seen[0])  # no momentum yet, as at epoch 0's start


class AddsAParameterGroupAtEpoch2(Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 2:
            trainer.optimizers[0].add_param_group({"params": [nn.Parameter(torch.zeros(1))]})


def test_a_restore_at_the_rounds_start_that_cannot_be_made_warns(tmp_path) -> None:
    """A callback listed first adds a parameter group where the round starts: the snapshot's states no longer fit,
    and the plateau scheduler's step after the rewind stays, as the warning says."""
    opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    opt.add_param_group({"params": [nn.Parameter(torch.ones(1))]})
    try:
        plateau.step(1.0), plateau.step(1.0)
    except IndexError:  # torch 2.5 and earlier
        pytest.skip("this torch's ReduceLROnPlateau does not step a parameter group added after it")
    look = LookAtStates()
    torch.manual_seed(0)
    callback = PruningCallback(scope="global", schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(3, [AddsAParameterGroupAtEpoch2(), callback, look], tmp_path).fit(OnPlateau(), _data(), _data())
    messages = [
        str(w.message) for w in caught if "could not be restored again at the start of epoch 2" in str(w.message)
    ]
    assert len(messages) == 1 and "parameter groups of sizes" in messages[0]
    assert look.seen[2][1] != look.seen[0][1]  # the plateau's step after the rewind stays
    # nothing stepped after the rewind (Lightning steps the StepLR before it): nothing to restore, no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback = PruningCallback(scope="global", schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0))
        _trainer(3, [AddsAParameterGroupAtEpoch2(), callback], tmp_path).fit(_model(), _data())
    assert not [w for w in caught if "could not be restored again" in str(w.message)]


class StepsItsSchedulersAtEpochEnd(Tiny):
    """Manual optimization with two optimizers, whose LR schedulers the model steps in `on_train_epoch_end`,
    which Lightning calls after the callbacks' `on_train_epoch_end`, where the rewind ran."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        first, second = self.optimizers()
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()

    def on_train_epoch_end(self) -> None:
        for scheduler in self.lr_schedulers():
            scheduler.step()

    def configure_optimizers(self):
        first = torch.optim.SGD(self.fc1.parameters(), lr=LR, momentum=0.9)
        second = torch.optim.Adam([*self.bn.parameters(), *self.fc2.parameters()], lr=0.01)
        schedulers = [
            torch.optim.lr_scheduler.StepLR(first, 1, 0.5),
            torch.optim.lr_scheduler.ExponentialLR(second, 0.9),
        ]
        return [first, second], schedulers


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_rounds_start_as_the_rewind_epoch_when_the_model_steps_its_schedulers_at_epoch_end(
    tmp_path, masking: str
) -> None:
    look = LookAtStates()
    torch.manual_seed(0)
    callback = PruningCallback(
        scope="global", schedule=Explicit({1: 0.3, 2: 0.5}), rewind=Rewind(epoch=1), masking=masking
    )
    _trainer(4, [callback, look], tmp_path).fit(StepsItsSchedulersAtEpochEnd(), _data())
    optimizers, schedulers = look.seen[1]
    assert optimizers[0]["param_groups"][0]["lr"] == LR / 2  # stepped once, after epoch 0
    for epoch in (2, 3):  # the rounds after the events after epochs 1 and 2
        assert look.seen[epoch][1] == schedulers
        assert [o["param_groups"] for o in look.seen[epoch][0]] == [o["param_groups"] for o in optimizers]
    if masking == "reparametrize":  # in place, the momentum at entries pruned since is zeroed
        _assert_equal(look.seen[3][0], optimizers)


def test_a_resume_from_the_events_epoch_end_restores_the_plateau_scheduler_as_the_uninterrupted_fit(
    tmp_path,
) -> None:
    """The checkpoint saved at the event's epoch end comes before Lightning's plateau step: the resumed fit's round
    starts where the uninterrupted one's does."""

    def fit(root: Path, ckpt_path: Path | None = None) -> tuple[LookAtStates, dict]:
        look = LookAtStates()
        checkpoints = ModelCheckpoint(dirpath=root, save_top_k=-1, filename="{epoch}")
        torch.manual_seed(0)
        model = OnPlateau()
        callback = PruningCallback(scope="global", schedule=Explicit({1: 0.3, 2: 0.5}), rewind=Rewind(epoch=0))
        trainer = _trainer(4, [callback, look, checkpoints], root.parent, enable_checkpointing=True)
        trainer.fit(model, _data(), _data(), ckpt_path=ckpt_path)
        return look, _plain(model)

    whole, weights = fit(tmp_path / "whole")
    resumed, resumed_weights = fit(tmp_path / "resumed", tmp_path / "whole" / "epoch=1.ckpt")
    assert resumed.seen[2][1] == whole.seen[2][1] == whole.seen[0][1]
    assert resumed.seen[3][1] == whole.seen[3][1]
    _assert_equal(resumed.seen[2][0], whole.seen[2][0])
    for name, value in weights.items():
        assert torch.equal(resumed_weights[name], value), name


# ---------------------------------------------------------------------------- resume


def _checkpoint_after_epoch_1(tmp_path: Path, rewind: Rewind | None) -> Path:
    callback = PruningCallback(scope="global", schedule=Explicit({1: 0.3, 3: 0.5}), rewind=rewind)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    _trainer(2, [callback, checkpoint], tmp_path, enable_checkpointing=True).fit(_model(), _data())
    (path,) = (tmp_path / "ckpt").glob("epoch=1-*.ckpt")
    return path


def test_a_snapshot_refuses_an_lr_scheduler_replaced_since() -> None:
    from lightning_prune.lottery import Snapshot

    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    step = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    snapshot = Snapshot.from_state_dict(Snapshot.take(model, [opt], [step]).state_dict())
    snapshot.check(model, [opt], [step])
    swa = torch.optim.swa_utils.SWALR(opt, swa_lr=0.05)
    with pytest.raises(RuntimeError, match=r"scheduler 0 is a torch.optim.swa_utils.SWALR now, the snapshot's was a "):
        snapshot.check(model, [opt], [swa])
    older = Snapshot.take(model, [opt], [step]).state_dict()
    del older["classes"]  # written before the classes were recorded: not checked
    Snapshot.from_state_dict(older).check(model, [opt], [swa])


@pytest.mark.parametrize("order", ["pruning first", "averaging first"])
def test_rounds_restore_the_scheduler_that_stochastic_weight_averaging_starts_at_the_rewind_epoch(
    tmp_path, order: str
) -> None:
    """SWA replaces the LR scheduler in its `on_train_epoch_start`; the snapshot, taken at the epoch's
    first step, holds the one it made, whatever the callbacks' order."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    callback = PruningCallback(schedule=Explicit({2: 0.5, 3: 0.75}), rewind=Rewind(epoch=1))
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2, annealing_epochs=1)
    probe = Probe("start")
    callbacks = [callback, swa] if order == "pruning first" else [swa, callback]
    _trainer(5, [*callbacks, probe], tmp_path).fit(_model(), _data())
    assert [probe.seen[e]["lr"] for e in (3, 4)] == [probe.seen[1]["lr"]] * 2


def test_a_rewind_with_stochastic_weight_averaging_resumes(tmp_path) -> None:
    """Resumed past its start, SWA drops the LR schedulers and makes its own at the epoch's start: the
    snapshot's scheduler is checked at the event, not refused at train start."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    def callbacks() -> list:
        return [
            PruningCallback(schedule=Explicit({1: 0.5, 3: 0.7}), rewind=Rewind(epoch=1), make_permanent=False),
            StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2),
        ]

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    whole = _model()
    _trainer(5, [*callbacks(), checkpoints], tmp_path, enable_checkpointing=True).fit(whole, _data())
    for epoch in (1, 2):
        resumed = _model()
        _trainer(5, callbacks(), tmp_path).fit(resumed, _data(), ckpt_path=tmp_path / "ckpt" / f"epoch={epoch}.ckpt")
        for name in WEIGHTS:
            assert torch.equal(resumed.get_buffer(name + "_mask"), whole.get_buffer(name + "_mask")), (epoch, name)


class _Annealed(Tiny):
    """A buffer that each epoch's `on_train_epoch_start` halves: each round runs it again."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.tensor(1.0))

    def on_train_epoch_start(self) -> None:
        self.temperature.mul_(0.5)


@pytest.mark.parametrize("pruning_first", [True, False])
def test_rounds_start_as_the_rewind_epoch_did_after_epoch_start_hooks_run_again(tmp_path, pruning_first) -> None:
    class FirstStep(Callback):
        seen: dict[int, float] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0:
                self.seen[trainer.current_epoch] = float(pl_module.temperature)

    callback, probe = PruningCallback(schedule=Explicit({1: 0.5, 2: 0.7}), rewind=Rewind(epoch=1)), FirstStep()
    _trainer(4, [callback, probe] if pruning_first else [probe, callback], tmp_path).fit(_model(cls=_Annealed), _data())
    assert probe.seen == {0: 0.5, 1: 0.25, 2: 0.25, 3: 0.25}


class _Backbone(Tiny):
    """`fc1` is the backbone that BackboneFinetuning freezes, then unfreezes into a new parameter group."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = self.fc1

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=LR, momentum=0.9)


@pytest.mark.parametrize("pruning_first", [True, False])
def test_a_parameter_group_added_at_the_rewind_epochs_start_is_in_the_snapshot(tmp_path, pruning_first) -> None:
    from lightning.pytorch.callbacks import BackboneFinetuning

    callback = PruningCallback(schedule=Explicit({1: 0.5, 2: 0.7}), rewind=Rewind(epoch=1), targets=["fc2.weight"])
    finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 1.0)
    callbacks = [callback, finetuning] if pruning_first else [finetuning, callback]
    _trainer(4, callbacks, tmp_path).fit(_model(cls=_Backbone), _data())
    assert callback._round == 2


class _Unsized(torch.utils.data.IterableDataset):
    """A dataset without a length: Lightning counts its batches as infinite."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __iter__(self):
        yield from self.dataset


def test_an_unsized_loader_resumes_from_the_last_batch_before_the_rewind_epoch(tmp_path) -> None:
    """Lightning runs no `on_train_epoch_start` for epoch 1 after that resume: the snapshot is taken
    when training starts, with a loader of unknown length too."""
    loader = DataLoader(_Unsized(_data().dataset), batch_size=16)

    def callback() -> PruningCallback:
        return PruningCallback(schedule=Explicit({1: 0.5, 3: 0.7}), rewind=Rewind(epoch=1), make_permanent=False)

    steps = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    whole, resumed = _model(), _model()
    _trainer(5, [callback(), steps], tmp_path, enable_checkpointing=True).fit(whole, loader)
    _trainer(5, [callback()], tmp_path).fit(resumed, loader, ckpt_path=tmp_path / "ckpt" / "step=4.ckpt")
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


@pytest.mark.parametrize(
    ("events", "swa_epoch_start", "step", "error", "match"),
    [
        # resumed within epoch 1, whose end rewinds: SWA (started at 1) makes its scheduler again at epoch 2's start
        ({1: 0.5, 3: 0.7}, 2, 5, RuntimeError, r"does not fit this run. Cannot rewind: the snapshot holds 1 optim"),
        # resumed from epoch 0's last batch: the rewind epoch's start, where SWA would make it again, is skipped
        ({1: 0.5, 2: 0.7}, 1, 4, ValueError, r"this resume skips the start of epoch 1.*written at an epoch's end"),
    ],
    ids=["within-an-event-epoch", "skipping-the-rewind-epochs-start"],
)
def test_a_resume_that_skips_the_start_where_stochastic_weight_averaging_makes_its_scheduler_fails_before_training(
    tmp_path, events, swa_epoch_start: int, step: int, error: type[Exception], match: str
) -> None:
    """SWA, resumed past its start, makes its scheduler at the next epoch start Lightning runs: refused before
    the first step where an event would rewind before it, not at the event."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    def callbacks() -> list:
        return [
            PruningCallback(schedule=Explicit(events), rewind=Rewind(epoch=1)),
            StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=swa_epoch_start),
        ]

    steps = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    _trainer(3, [*callbacks(), steps], tmp_path, enable_checkpointing=True).fit(_model(), _data())
    model = _model()
    with pytest.raises(error, match=match):
        _trainer(3, callbacks(), tmp_path).fit(model, _data(), ckpt_path=tmp_path / "ckpt" / f"step={step}.ckpt")
    assert model.trainer.global_step == step


def test_a_rewind_before_stochastic_weight_averaging_starts_fails_before_training(tmp_path) -> None:
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    callback = PruningCallback(schedule=Explicit({2: 0.5, 3: 0.75}), rewind=Rewind(epoch=1))
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=3)
    model = _model()
    before = _plain(model)
    with pytest.raises(ValueError, match=r"replaces it at the start of epoch 2, before the event after epoch 2"):
        _trainer(5, [callback, swa], tmp_path).fit(model, _data())
    assert all(torch.equal(before[n], v) for n, v in _plain(model).items())


@pytest.mark.parametrize("rewind", [Rewind(epoch=1), Rewind(epoch=0, reinit=True)], ids=["other-epoch", "other-arm"])
def test_resume_with_another_rewind_fails_before_training(tmp_path, rewind: Rewind) -> None:
    path = _checkpoint_after_epoch_1(tmp_path, Rewind(epoch=0))
    callback = PruningCallback(scope="global", schedule=Explicit({1: 0.3, 3: 0.5}), rewind=rewind)
    trainer = _trainer(4, [callback], tmp_path)
    model = _model()
    before = {n: v.clone() for n, v in _plain(model).items()}
    with pytest.raises(ValueError, match=r"rewound with Rewind\(epoch=0, reinit=False\), but this callback has"):
        trainer.fit(model, _data(), ckpt_path=path)
    assert trainer.global_step == 0
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers()), "not pruned"
    assert all(torch.equal(before[n], v) for n, v in _plain(model).items()), "refused before the weights load"


class _TinyWithHead(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(super().forward(x))


def test_resume_with_other_targets_fails_before_the_weights_load(tmp_path) -> None:
    """torch's strict load copies the keys that match before it raises for the others."""
    path = _checkpoint_after_epoch_1(tmp_path, None)
    callback = PruningCallback(scope="global", schedule=Explicit({1: 0.3, 3: 0.5}))
    model = _model(cls=_TinyWithHead)
    before = {n: v.clone() for n, v in _plain(model).items()}
    with pytest.raises(ValueError, match=r"saved pruning masks are for targets .* this model's targets are"):
        _trainer(4, [callback], tmp_path).fit(model, _data(), ckpt_path=path)
    assert all(torch.equal(before[n], v) for n, v in _plain(model).items()), "refused before the weights load"


class _SaveAtEpochEnd(Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path / f"epoch={trainer.current_epoch}.ckpt")


def _checkpoint_between_two_callbacks(tmp_path: Path) -> tuple[Path, dict]:
    """Written after the rewinding callback's event, before the last pruning callback ran the due rewinds."""
    rewinding = PruningCallback(targets=["fc1.weight"], schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0))
    other = PruningCallback(targets=["fc2.weight"], schedule=Explicit({1: 0.5}))
    _trainer(2, [rewinding, _SaveAtEpochEnd(tmp_path), other], tmp_path).fit(_model(), _data())
    return tmp_path / "epoch=1.ckpt", torch.load(tmp_path / "epoch=1.ckpt", weights_only=False)


def test_a_rewind_due_in_the_checkpoint_runs_when_training_resumes(tmp_path) -> None:
    path, saved = _checkpoint_between_two_callbacks(tmp_path)
    rewinding = PruningCallback(
        targets=["fc1.weight"], schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0), make_permanent=False
    )
    assert saved["callbacks"][rewinding.state_key]["rewind_pending"]
    other = PruningCallback(targets=["fc2.weight"], schedule=Explicit({1: 0.5}), make_permanent=False)
    start = Probe("start")
    model = _model(seed=4)
    _trainer(3, [rewinding, other, start], tmp_path).fit(model, _data(), ckpt_path=path)
    snapshot = saved["callbacks"][rewinding.state_key]["snapshot"]["tensors"]
    assert torch.equal(start.seen[2]["tensors"]["fc1.weight"], snapshot["fc1.weight"])


def test_resume_without_rewind_says_the_due_rewind_does_not_run(tmp_path) -> None:
    path, _ = _checkpoint_between_two_callbacks(tmp_path)
    callbacks = [
        PruningCallback(targets=["fc1.weight"], schedule=Explicit({1: 0.5})),
        PruningCallback(targets=["fc2.weight"], schedule=Explicit({1: 0.5})),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(3, callbacks, tmp_path).fit(_model(seed=4), _data(), ckpt_path=path)
    assert any("whose rewind had not run yet" in str(w.message) for w in caught)


def test_resume_before_the_rewind_epoch_takes_the_snapshot_there(tmp_path) -> None:
    """Written at the end of epoch 0 by a checkpoint without the callback's snapshot, which epoch 1 takes."""

    def callback() -> PruningCallback:
        return PruningCallback(
            scope="global", schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=1), make_permanent=False
        )

    straight = _model()
    _trainer(3, [callback()], tmp_path / "straight").fit(straight, _data())
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)
    _trainer(1, [callback(), checkpoint], tmp_path, enable_checkpointing=True).fit(_model(), _data())
    (path,) = (tmp_path / "ckpt").glob("epoch=0-*.ckpt")
    resumed = _model(seed=7)
    _trainer(3, [callback()], tmp_path / "resumed").fit(resumed, _data(), ckpt_path=path)
    for name, value in _final(straight).items():
        assert torch.equal(_final(resumed)[name], value), name


def test_missed_events_of_two_callbacks_rank_the_trained_weights(tmp_path) -> None:
    """Resumed from the last batch of an event epoch, Lightning skips its end: both callbacks' events run at
    the start of training, and the rewind only after both."""

    def callbacks() -> list[PruningCallback]:
        return [
            PruningCallback(
                targets=["fc1.weight"], schedule=Explicit({1: 0.5}), rewind=Rewind(0), make_permanent=False
            ),
            PruningCallback(targets=["fc2.weight"], schedule=Explicit({1: 0.5}), make_permanent=False),
        ]

    straight = _model()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=4)  # 4 batches an epoch
    _trainer(3, [*callbacks(), checkpoint], tmp_path, enable_checkpointing=True).fit(straight, _data())
    path = tmp_path / "ckpt" / "epoch=1-step=8.ckpt"
    assert torch.load(path, weights_only=False)["callbacks"][callbacks()[0].state_key]["done_epoch"] == 0
    resumed = _model(seed=7)
    _trainer(3, callbacks(), tmp_path / "resumed").fit(resumed, _data(), ckpt_path=path)
    for name, value in _final(straight).items():
        assert torch.equal(_final(resumed)[name], value), name


def test_resume_past_the_rewind_epoch_without_a_snapshot_fails_before_training(tmp_path) -> None:
    """A checkpoint written without rewinding holds no snapshot; resumed with a rewind to an epoch that has
    passed, the next event would fail after training up to it."""
    path = _checkpoint_after_epoch_1(tmp_path, None)
    model = _model(seed=5)
    callback = PruningCallback(
        scope="global", schedule=Explicit({1: 0.3, 3: 0.5}), rewind=Rewind(epoch=0), make_permanent=False
    )
    trainer = _trainer(5, [callback], tmp_path)
    with pytest.raises(RuntimeError, match=r"holds no snapshot.*the event after epoch 3 would have nothing"):
        trainer.fit(model, _data(), ckpt_path=path)
    saved = torch.load(path, weights_only=False)
    assert trainer.global_step == saved["global_step"]
    # a schedule already through needs no snapshot
    done = PruningCallback(scope="global", schedule=Explicit({1: 0.3}), rewind=Rewind(epoch=0))
    _trainer(3, [done], tmp_path).fit(_model(), _data(), ckpt_path=path)


@pytest.mark.parametrize("step", [5, 6])
def test_a_resume_within_the_rewind_epoch_from_a_checkpoint_without_the_callback_fails_before_training(
    tmp_path, step: int
) -> None:
    """The epoch's start has passed: a snapshot taken when training resumes would hold its middle."""
    steps = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    _trainer(2, [steps], tmp_path, enable_checkpointing=True).fit(_model(), _data())
    callback = PruningCallback(schedule=Explicit({1: 0.5, 2: 0.7}), rewind=Rewind(epoch=1))
    trainer = _trainer(3, [callback], tmp_path)
    with pytest.raises(RuntimeError, match=r"holds no snapshot .* resumes past the start of epoch 1"):
        trainer.fit(_model(), _data(), ckpt_path=tmp_path / "ckpt" / f"step={step}.ckpt")
    assert trainer.global_step == step


class Crash(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 2 and batch_idx == 2:
            raise RuntimeError("simulated crash")


def _final(model: Tiny) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in _plain(model).items():
        if name in WEIGHTS:
            mask = model.get_buffer(name + "_mask")
            out[name + "_mask"] = mask.clone()
            value = value * mask
        out[name] = value
    return out


@pytest.mark.parametrize(
    ("reinit", "seed", "validate"),
    [
        pytest.param(False, 3, False, id="ticket"),
        pytest.param(True, None, False, id="control-drawn-seed"),
        # Saved at validation end, before the epoch's pruning event: the resumed run must do it.
        pytest.param(False, 3, True, id="ticket-checkpoint-before-event"),
    ],
)
def test_resume_ends_like_uninterrupted_run(tmp_path, reinit: bool, seed: int | None, validate: bool) -> None:
    cls, val = (TinyVal, _data()) if validate else (Tiny, None)

    def callback() -> PruningCallback:
        return PruningCallback(
            scope="global",
            schedule=Geometric(rate=0.3, start_epoch=1),
            rewind=Rewind(epoch=1, reinit=reinit),
            seed=seed,
            make_permanent=False,
        )

    straight = _model(cls=cls)
    _trainer(4, [callback()], tmp_path / "straight").fit(straight, _data(), val)
    expected = _final(straight)

    crashed = _model(cls=cls)
    pruning = callback()
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=not validate
    )
    trainer = _trainer(4, [pruning, Crash(), checkpoint], tmp_path / "crashed", enable_checkpointing=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(crashed, _data(), val)
    (path,) = (tmp_path / "ckpt").glob("epoch=1-*.ckpt")
    saved = torch.load(path, weights_only=False)["callbacks"][pruning.state_key]
    assert saved["done_epoch"] == (0 if validate else 1)
    assert saved["snapshot"] is not None
    assert not saved["rewind_pending"], "written after the pruning callbacks' rewinds"

    resumed = _model(seed=123, cls=cls)  # another initialisation, and another global RNG state for a drawn seed
    _trainer(4, [callback()], tmp_path / "resumed").fit(resumed, _data(), val, ckpt_path=path)
    got = _final(resumed)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert sum(int((~got[n + "_mask"]).sum()) for n in WEIGHTS) == round((1 - 0.7**3) * TOTAL)


# ---------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "accelerator",
    [
        pytest.param("cpu", id="cpu"),
        pytest.param(
            "cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
        ),
    ],
)
def test_snapshot_is_one_copy_on_the_parameters_device(tmp_path, accelerator: str) -> None:
    seen = {}

    class Look(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:  # before the model leaves the GPU at fit end
            seen["snapshot"] = callback.state_dict()["snapshot"]
            live = {**dict(pl_module.named_parameters()), **dict(pl_module.named_buffers())}
            seen["live"] = {n: (t.device, t.dtype, t.shape, t.untyped_storage().data_ptr()) for n, t in live.items()}

    model = _model()
    init = _plain(model)
    callback = PruningCallback(scope="global", schedule=0.5, rewind=Rewind(epoch=0), make_permanent=False)
    trainer = _trainer(1, [callback, Look()], tmp_path, accelerator=accelerator, devices=1)
    trainer.fit(model, _data())

    tensors, live = seen["snapshot"]["tensors"], seen["live"]
    device = torch.device("cuda", 0) if accelerator == "cuda" else torch.device("cpu")
    assert sorted(tensors) == sorted(init), "one entry per parameter and buffer, plain names, no masks"
    assert seen["snapshot"]["optimizers"][0]["state"] == {}
    pointers = set()
    for name, value in tensors.items():
        current_device, dtype, shape, _ = live.get(name, live.get(name + "_orig"))
        assert value.device == current_device == device, name
        assert value.dtype == dtype and value.shape == shape, name
        assert not value.requires_grad
        assert torch.equal(value.cpu(), init[name]), name
        pointers.add(value.untyped_storage().data_ptr())
    live_pointers = {pointer for *_, pointer in live.values()}
    assert len(pointers) == len(tensors) and not pointers & live_pointers, "copies, not views of the live tensors"
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    live_bytes = sum(s.numel() * dtype.itemsize for n, (_, dtype, s, _) in live.items() if not n.endswith("_mask"))
    assert nbytes == live_bytes
    # after fit, Lightning has moved the model to the CPU; the snapshot kept for a next fit followed it
    assert all(t.device.type == "cpu" for t in callback.state_dict()["snapshot"]["tensors"].values())


def test_snapshot_moves_optimizer_state_only_to_the_cpu() -> None:
    """Module tensors follow the model; optimizer state is left for ``load_state_dict`` to place.

    Adam's ``step`` must stay a CPU tensor unless the optimizer is capturable or fused, and
    ``load_state_dict`` keeps it wherever it finds it, so a snapshot never moves it off the CPU.
    """
    from lightning_prune.lottery import Snapshot

    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    snapshot = Snapshot.take(model, [optimizer], [])

    away = snapshot.to(torch.device("meta"))
    assert all(t.device.type == "meta" for t in away.tensors.values())
    assert away.optimizers is snapshot.optimizers
    state = away.optimizers[0]["state"][0]
    assert state["step"].device.type == "cpu" and state["exp_avg"].device.type == "cpu"

    back = snapshot.to(torch.device("cpu"))
    assert all(t.device.type == "cpu" for t in back.tensors.values())
    assert torch.equal(back.optimizers[0]["state"][0]["exp_avg"], state["exp_avg"])


# ---------------------------------------------------------------------------- the example


def test_lottery_example_quick(tmp_path, capsys) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "lottery_ticket.py"
    spec = importlib.util.spec_from_file_location("lottery_ticket_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--quick", "--out", str(tmp_path)])

    with open(tmp_path / "lottery_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], r["seed"], r["round"]) for r in rows] == [
        ("ticket", "0", "0"),
        ("ticket", "0", "1"),
        ("control", "0", "0"),
        ("control", "0", "1"),
    ]
    total = 64 * 300 + 300 * 100 + 100 * 10
    for row in rows:
        kept = total - round((1 - 0.8 ** int(row["round"])) * total)
        assert float(row["remaining"]) == pytest.approx(kept / total, abs=1e-6), "measured before the round's event"
        assert 0.0 <= float(row["test_acc"]) <= 1.0
    assert rows[0]["test_acc"] == rows[2]["test_acc"], "both arms train the same dense network in round 0"
    assert (tmp_path / "lottery_results.png").stat().st_size > 10_000
    assert "| round | remaining % |" in capsys.readouterr().out


class _PrunedStaysZero(Callback):
    """Before every training batch: how many of ``callback``'s pruned entries are not zero."""

    def __init__(self, callback: PruningCallback) -> None:
        self.callback, self.nonzero = callback, []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, i: int) -> None:
        mask = self.callback._current_masks()[0]
        self.nonzero.append(int((effective_weights(pl_module)["fc2.weight"][~mask] != 0).sum()))


def test_a_rewind_keeps_another_callbacks_pruned_weights_at_zero(tmp_path: Path) -> None:
    """The rewind writes every tensor and the optimizer's momentum; another callback's in_place targets pruned
    before it must stay at zero, as the reparametrization's masks keep them, and train the same."""
    final = {}
    for masking in ("reparametrize", "in_place"):
        rewinding = PruningCallback(
            targets=["fc1.weight"], schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0), make_permanent=False
        )
        other = PruningCallback(targets=["fc2.weight"], schedule=Explicit({0: 0.5}), masking=masking)
        probe = _PrunedStaysZero(other)
        model = make_model()
        make_trainer(tmp_path, callbacks=[rewinding, other, probe], max_epochs=3).fit(model, make_loader())
        assert probe.nonzero[3:] == [0] * 6, masking  # the event after epoch 0 prunes 20 of fc2's 39 entries
        final[masking] = effective_weights(model)
    assert_tensors_equal(final["in_place"], final["reparametrize"])


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_a_rewind_leaves_another_callbacks_unpruned_targets_plain(tmp_path: Path, masking: str) -> None:
    rewinding = PruningCallback(
        targets=["fc1.weight"], schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=0), make_permanent=False
    )
    other = PruningCallback(targets=["fc2.weight"], schedule=Explicit({5: 0.5}), masking=masking, make_permanent=False)
    model = make_model()
    make_trainer(tmp_path, callbacks=[rewinding, other], max_epochs=3).fit(model, make_loader())
    assert [k for k in model.state_dict() if k.startswith("fc2.")] == ["fc2.weight", "fc2.bias"]
    assert other.state_dict()["masks"] == {}  # before its first event


def test_reinit_takes_the_largest_seed(tmp_path) -> None:
    """The seed is read modulo 2**64, as torch maps a negative seed: 2**64 - 1 re-samples as -1 does."""
    _, largest = _control(tmp_path, seed=2**64 - 1)
    _, minus_one = _control(tmp_path, seed=-1)
    for name in WEIGHTS:
        assert torch.equal(largest["tensors"][name], minus_one["tensors"][name])


def test_rewind_epoch_takes_a_numpy_integer() -> None:
    np = pytest.importorskip("numpy")
    rewind = Rewind(epoch=np.int64(2))
    assert rewind == Rewind(epoch=2) and type(rewind.epoch) is int
