"""Bad input fails early and clearly; documented edge cases (tied, frozen, empty tensors) just work.

Every error must be raised at construction or in ``setup``, before a single training step, with a
message naming the argument and the value (or the candidate names), and the model's state_dict
must be bit-identical afterwards, with no ``_mask`` buffer.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateFinder, ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn
from torch.nn.utils import prune

from lightning_prune import PruningCallback, Rewind, core
from lightning_prune.methods import resolve_method
from lightning_prune.schedules import Constant, Explicit, Geometric, Linear, Polynomial, Schedule
from lightning_prune.targets import resolve_targets
from tests.helpers import (
    WEIGHTS,
    TinyNet,
    assert_same_state,
    assert_tensors_equal,
    ema_weight_averaging,
    make_loader,
    make_model,
    make_trainer,
    masks_of,
    snapshot_state,
)

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")


class BatchCounter(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.batches += 1


class IntParamNet(TinyNet):
    """:class:`TinyNet` plus an integer and a bool ``nn.Parameter`` (frozen, as they must be)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)
        self.flags = nn.Parameter(torch.ones(4, dtype=torch.bool), requires_grad=False)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias], lr=0.1)


class NormOnly(LightningModule):
    """Nothing a default target would select: only norm layers."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(7)
        self.bn = nn.BatchNorm1d(7)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.bn(self.norm(batch[0])).pow(2).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class StructuredCustom(prune.BasePruningMethod):
    PRUNING_TYPE = "structured"

    def __init__(self, amount: float, dim: int = -1) -> None:
        self.amount, self.dim = amount, dim

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        return default_mask


class StructuredWithoutDim(prune.BasePruningMethod):
    """Structured, with no ``dim``: torch can apply it to a tensor once, never again."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount: float) -> None:
        self.amount = amount

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        return default_mask


class FirstRowsWithoutDim(StructuredWithoutDim):
    """Structured, with no ``dim``: prunes the first rows, a fraction ``amount`` of them."""

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        mask = default_mask.clone()
        mask[: round(self.amount * t.shape[0])] = 0
        return mask


class NeedsExtraArgument(prune.BasePruningMethod):
    PRUNING_TYPE = "unstructured"

    def __init__(self, amount: float, threshold: float) -> None:
        self.amount, self.threshold = amount, threshold

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        return default_mask


class AtEpochOne(Schedule):
    """A user's schedule: ``value`` at the end of epoch 1, nothing else."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def sparsity_at(self, epoch: int) -> Any:
        return self.value if epoch == 1 else None


# ---------------------------------------------------------------- errors at construction

INIT_CASES = [
    pytest.param(lambda: {"schedule": Constant(1.5)}, r"`sparsity`.*\[0, 1\].*1\.5", id="constant_above_1"),
    pytest.param(lambda: {"schedule": -0.1}, r"`schedule.*\[0, 1\].*-0\.1", id="bare_float_below_0"),
    pytest.param(lambda: {"schedule": 1.5}, r"`schedule.*\[0, 1\].*1\.5", id="bare_float_above_1"),
    pytest.param(lambda: {"schedule": "0.5"}, r"`schedule`.*'0\.5'", id="schedule_string"),
    pytest.param(
        lambda: {"schedule": Polynomial(final_sparsity=0.2, start_epoch=0, end_epoch=3, initial_sparsity=0.5)},
        r"`initial_sparsity` <= `final_sparsity`.*0\.5 > 0\.2",
        id="polynomial_final_below_initial",
    ),
    pytest.param(
        lambda: {"schedule": Polynomial(final_sparsity=1.5, start_epoch=0, end_epoch=3)},
        r"`final_sparsity`.*1\.5",
        id="polynomial_final_above_1",
    ),
    pytest.param(
        lambda: {"schedule": Linear(0.5, start_epoch=0, end_epoch=3, every_n_epochs=0)},
        r"`every_n_epochs`.*0",
        id="linear_every_0_epochs",
    ),
    pytest.param(
        lambda: {"schedule": Linear(0.5, start_epoch=3, end_epoch=1)}, r"`end_epoch`.*>= 3.*1", id="linear_end_first"
    ),
    pytest.param(lambda: {"schedule": Geometric(rate=0.0)}, r"`rate`.*\(0, 1\].*0\.0", id="geometric_rate_0"),
    pytest.param(lambda: {"schedule": Geometric(rate=1e-13)}, r"`rate`.*1e-12.*1e-13", id="geometric_rate_below_1e-12"),
    pytest.param(
        lambda: {"schedule": Geometric(rate=1e-17, final_sparsity=0.5)}, r"`rate`.*1e-17", id="geometric_rate_1e-17"
    ),
    pytest.param(lambda: {"schedule": Explicit({"²": 0.5})}, r"`sparsities epoch`.*'²'", id="explicit_superscript"),
    pytest.param(
        lambda: {"schedule": Explicit({0: 0.5, 1: 0.3})},
        r"`sparsities`.*non-decreasing.*0\.5.*0\.3",
        id="explicit_decreasing",
    ),
    pytest.param(lambda: {"schedule": Explicit({0: 1.2})}, r"`sparsities\[0\]`.*1\.2", id="explicit_above_1"),
    pytest.param(lambda: {"schedule": Explicit({-1: 0.2})}, r"epoch.*-1", id="explicit_negative_epoch"),
    pytest.param(
        lambda: {"method": "l2_unstructured"},
        r"`method`.*'l1_unstructured', 'random_unstructured', 'ln_structured', 'random_structured'.*'l2_unstructured'",
        id="unknown_method",
    ),
    pytest.param(
        lambda: {"method": "no_such_package.PruneIt"}, r"`method='no_such_package\.PruneIt'`", id="unimportable_path"
    ),
    pytest.param(
        lambda: {"method": nn.Linear}, r"`method`.*Linear.*HINT: subclass `BasePruningMethod`", id="not_a_method_class"
    ),
    pytest.param(
        lambda: {"method": prune.L1Unstructured(amount=0.3)},
        r"`method`.*instance.*pass the class, not an instance",
        id="method_instance",
    ),
    pytest.param(lambda: {"scope": "everything"}, r"`scope`.*'layer' or 'global'.*'everything'", id="bad_scope"),
    pytest.param(
        lambda: {"targets": "fc1.weight"}, r"`targets`.*list of name patterns.*'fc1\.weight'", id="str_targets"
    ),
    pytest.param(
        lambda: {"norm": float("nan")}, r"`norm`.*real number, 'inf', '-inf' or 'fro'.*got nan$", id="norm_nan"
    ),
    pytest.param(lambda: {"norm": "nuc"}, r"`norm`.*real number, 'inf', '-inf' or 'fro'.*got 'nuc'", id="norm_nuc"),
    pytest.param(lambda: {"norm": "foo"}, r"`norm`.*real number, 'inf', '-inf' or 'fro'.*got 'foo'", id="norm_foo"),
    pytest.param(lambda: {"norm": float("nan")}, r"`norm`.*got nan", id="norm_nan"),
    pytest.param(lambda: {"dim": "1"}, r"`dim`.*int.*'1'", id="dim_string"),
    pytest.param(lambda: {"rewind": Rewind(epoch=-1)}, r"`Rewind\.epoch`.*-1", id="rewind_negative"),
    pytest.param(lambda: {"rewind": 3}, r"`rewind`.*got 3", id="rewind_int"),
    pytest.param(
        lambda: {"rewind": {"epochs": 1}}, r"`rewind`.*'epoch' and 'reinit'.*\['epochs'\]", id="rewind_unknown_key"
    ),
    pytest.param(
        lambda: {"method": prune.PruningContainer},
        r"`method=PruningContainer`.*container.*not a method",
        id="container",
    ),
    pytest.param(lambda: {"seed": "abc"}, r"`seed`.*'abc'", id="seed_string"),
    pytest.param(lambda: {"seed": 2**64}, r"`seed`.*\[-2\*\*63, 2\*\*64\).*18446744073709551616", id="seed_high"),
    pytest.param(lambda: {"seed": -(2**63) - 1}, r"`seed`.*-9223372036854775809", id="seed_low"),
    pytest.param(
        lambda: {"make_permanent": "false"}, r"`make_permanent` to be True or False, got 'false'", id="permanent_string"
    ),
    pytest.param(lambda: {"make_permanent": None}, r"`make_permanent`.*got None", id="permanent_none"),
    pytest.param(lambda: {"log_per_layer": "no"}, r"`log_per_layer` to be True or False, got 'no'", id="log_string"),
    pytest.param(
        lambda: {"schedule": Explicit({"1": 0.5, 1: 0.7})}, r"`sparsities`.*epoch 1 twice", id="explicit_same_epoch"
    ),
]


@pytest.mark.parametrize(("kwargs", "match"), INIT_CASES)
def test_bad_argument_fails_at_construction(kwargs: Callable[[], dict[str, Any]], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        PruningCallback(**kwargs())


class _MaskAttribute(TinyNet):
    """A module that holds a plain attribute under the name of a mask buffer (``weight_mask``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc2.weight_mask = None


class _OrigParameter(TinyNet):
    """A module that holds a parameter under the name that a pruned ``weight`` is moved to."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1.weight_orig = nn.Parameter(torch.ones(2))


# ---------------------------------------------------------------- errors at setup, before any change

SETUP_CASES = [
    pytest.param(
        _MaskAttribute,
        {},
        r"Target 'fc2\.weight': Cannot prune `weight` of Linear: it already has an attribute `weight_mask`.*`exclude`",
        id="mask_name_taken",
    ),
    pytest.param(
        _OrigParameter,
        {"targets": ["fc1.weight"]},
        r"Target 'fc1\.weight': Cannot prune `weight` of Linear: it already has an attribute `weight_orig`",
        id="orig_name_taken",
    ),
    pytest.param(
        make_model,
        {"targets": ["conv*.weight"]},
        r"`targets` pattern 'conv\*\.weight' matches no parameter; candidates are .*'fc1\.weight'.*'fc2\.bias'",
        id="targets_match_nothing",
    ),
    pytest.param(
        make_model,
        {"targets": ["fc1.weight"], "exclude": ["fc9.*"]},
        r"`exclude` pattern 'fc9\.\*' matches no parameter; candidates are .*'fc1\.weight'",
        id="exclude_matches_nothing",
    ),
    pytest.param(
        make_model, {"exclude": ["fc*"]}, r"Nothing to prune.*`exclude=\['fc\*'\]`.*candidates", id="all_excluded"
    ),
    pytest.param(
        make_model,
        {"method": "ln_structured", "dim": 2},
        r"`dim` in \[-2, 1\] for target 'fc1\.weight' of shape \(13, 7\), got 2",
        id="ln_structured_dim_too_large",
    ),
    pytest.param(
        make_model,
        {"method": "random_structured", "dim": -3},
        r"`dim` in \[-2, 1\] for target 'fc1\.weight'.*got -3",
        id="random_structured_dim_too_small",
    ),
    pytest.param(
        make_model,
        {"method": "ln_structured", "targets": ["fc1.bias"]},
        r"`method='ln_structured'`.*at least 2 dimensions.*'fc1\.bias' has shape \(13,\)",
        id="ln_structured_on_bias",
    ),
    pytest.param(
        make_model,
        {"method": "random_structured", "targets": ["*.bias"]},
        r"`method='random_structured'`.*'fc1\.bias' has shape \(13,\)",
        id="random_structured_on_bias",
    ),
    pytest.param(
        IntParamNet,
        {"targets": ["fc1.weight", "steps"]},
        r"`targets` names 'steps', which is not a floating-point nn\.Parameter.*candidates are",
        id="int_parameter",
    ),
    pytest.param(
        IntParamNet,
        {"targets": ["flags"]},
        r"`targets` names 'flags', which is not a floating-point nn\.Parameter",
        id="bool_parameter",
    ),
    pytest.param(
        NormOnly,
        {},
        r"Nothing to prune: `targets=None`.*NormOnly; candidates are \['norm\.weight', 'norm\.bias', 'bn\.weight'",
        id="nothing_targetable",
    ),
    pytest.param(
        make_model,
        {"schedule": Explicit({0: 0.5, 3: 0.8}), "rewind": Rewind(epoch=2)},
        r"`rewind=Rewind\(epoch=2\)`.*`schedule` prunes after epoch 0",
        id="rewind_after_first_event",
    ),
    pytest.param(
        make_model,
        {"schedule": AtEpochOne(1.5)},
        r"`schedule` AtEpochOne\(value=1\.5\) returned 1\.5 for epoch 1; expected a sparsity in \[0, 1\] or None",
        id="custom_schedule_above_1",
    ),
    pytest.param(
        make_model, {"schedule": AtEpochOne(-0.2)}, r"returned -0\.2 for epoch 1", id="custom_schedule_below_0"
    ),
    pytest.param(make_model, {"schedule": AtEpochOne(math.nan)}, r"returned nan for epoch 1", id="custom_schedule_nan"),
    pytest.param(make_model, {"schedule": AtEpochOne("0.5")}, r"returned '0\.5' for epoch 1", id="custom_schedule_str"),
    pytest.param(
        make_model,
        {"method": StructuredCustom, "scope": "global"},
        r"`scope='global'`.*PRUNING_TYPE 'unstructured'.*'structured'",
        id="global_scope_with_structured_custom_method",
    ),
    pytest.param(
        make_model,
        {"method": StructuredWithoutDim, "schedule": Explicit({0: 0.3, 1: 0.6})},
        r"`method=StructuredWithoutDim` is structured and its instances have no `dim`.*events after epochs \[0, 1\]",
        id="structured_custom_method_without_dim_pruning_twice",
    ),
    pytest.param(
        make_model,
        {"method": FirstRowsWithoutDim, "schedule": Explicit({0: 0.18, 1: 0.18})},
        r"`method=FirstRowsWithoutDim` is structured and its instances have no `dim`.*events after epochs \[0, 1\]",
        id="structured_custom_method_without_dim_at_the_same_target_twice",  # whole rows fall short of 0.18
    ),
    pytest.param(
        make_model,
        {"method": NeedsExtraArgument},
        r"`method.*NeedsExtraArgument.*threshold",
        id="custom_method_with_unfillable_argument",
    ),
]


@pytest.mark.parametrize(("make", "kwargs", "match"), SETUP_CASES)
def test_bad_argument_fails_before_any_change(tmp_path: Path, make, kwargs: dict[str, Any], match: str) -> None:
    torch.manual_seed(0)
    model = make()
    before = snapshot_state(model)
    counter = BatchCounter()
    with pytest.raises((ValueError, TypeError), match=match):
        callback = PruningCallback(**kwargs)
        make_trainer(tmp_path, callbacks=[callback, counter], max_epochs=2).fit(model, make_loader())
    assert counter.batches == 0, "the error came after training started"
    assert_same_state(before, model)


# ---------------------------------------------------------------- sharded strategies


class MyFSDPStrategy(FSDPStrategy):
    """A user's subclass of a sharded strategy is just as sharded."""


class _FakeTrainer:
    """Just what ``PruningCallback.setup`` reads of a Trainer (FSDP refuses to build a CPU Trainer)."""

    world_size = 1
    global_rank = 0
    is_global_zero = True

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy


@pytest.mark.parametrize(
    "strategy", [pytest.param(FSDPStrategy, id="fsdp"), pytest.param(MyFSDPStrategy, id="subclass")]
)
def test_sharded_strategy_is_refused_at_setup(strategy: type) -> None:
    model = make_model()
    before = snapshot_state(model)
    fake_trainer = _FakeTrainer(strategy())
    callback = PruningCallback(seed=0)  # no seed to broadcast
    with pytest.raises(NotImplementedError, match=r"sharded strategy .*FSDPStrategy.*'ddp'"):
        callback.setup(fake_trainer, model, "fit")  # type: ignore[arg-type]
    assert callback.targets == []
    assert_same_state(before, model)


# ---------------------------------------------------------------- documented behaviours


class TiedNet(LightningModule):
    """``fc_a`` and ``fc_b`` hold one and the same weight ``nn.Parameter``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_a = nn.Linear(7, 7)
        self.fc_b = nn.Linear(7, 7)
        self.fc_b.weight = self.fc_a.weight
        self.out = nn.Linear(7, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.fc_b(torch.relu(self.fc_a(x)))))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


@pytest.mark.parametrize("scope", [pytest.param("layer", id="layer"), pytest.param("global", id="global")])
def test_tied_weights_are_pruned_once_and_both_modules_see_the_mask(tmp_path: Path, scope: str) -> None:
    torch.manual_seed(0)
    model = TiedNet()
    callback = PruningCallback(scope=scope, schedule=Explicit({0: 0.5, 1: 0.75}), make_permanent=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    make_trainer(tmp_path, callbacks=[callback, ckpt], max_epochs=2, enable_checkpointing=True).fit(
        model, make_loader()
    )
    assert [t.qualname for t in callback.targets] == ["fc_a.weight", "out.weight"]
    assert model.fc_a.weight_orig is model.fc_b.weight_orig
    assert torch.equal(model.fc_a.weight_mask, model.fc_b.weight_mask)
    assert torch.equal(model.fc_a.weight, model.fc_b.weight)
    masks = masks_of(model)
    pruned = int((~masks["fc_a.weight"]).sum()), int((~masks["out.weight"]).sum())
    if scope == "layer":
        assert pruned == (round(0.75 * 49), round(0.75 * 21))
    else:  # counted once: the shared tensor's 49 entries are not counted twice in the global total
        assert sum(pruned) == round(0.75 * (49 + 21))
    x = torch.randn(5, 7)
    model.fc_b(x)  # the hook of the second holder recomputes the weight from the shared mask
    assert bool((model.fc_b.weight[~model.fc_b.weight_mask] == 0).all())

    # The plain checkpoint has the masked weight under both names and loads strictly.
    state_dict = torch.load(tmp_path / "ckpt" / "epoch=1.ckpt", weights_only=False)["state_dict"]
    assert not [k for k in state_dict if k.endswith(("_orig", "_mask"))]
    torch.manual_seed(1)
    plain = TiedNet()
    plain.load_state_dict(state_dict, strict=True)
    assert torch.equal(plain.fc_a.weight, model.fc_a.weight)
    assert plain.fc_a.weight is plain.fc_b.weight


def test_tied_weights_stay_tied_after_make_permanent(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedNet()
    make_trainer(tmp_path, callbacks=[PruningCallback(schedule=0.5)], max_epochs=1).fit(model, make_loader())
    assert isinstance(model.fc_a.weight, nn.Parameter)
    assert model.fc_a.weight is model.fc_b.weight
    assert int((model.fc_a.weight == 0).sum()) == round(0.5 * 49)
    assert masks_of(model) == {}
    assert not model.fc_a._forward_pre_hooks and not model.fc_b._forward_pre_hooks


@pytest.mark.parametrize(
    "make_permanent", [pytest.param(True, id="permanent"), pytest.param(False, id="reparametrized")]
)
def test_frozen_parameters_are_pruned_like_others(tmp_path: Path, make_permanent: bool) -> None:
    model = make_model()
    model.fc1.weight.requires_grad_(False)
    frozen_before = model.fc1.weight.detach().clone()
    callback = PruningCallback(schedule=Explicit({0: 0.5, 1: 0.7}), make_permanent=make_permanent)
    make_trainer(tmp_path, callbacks=[callback], max_epochs=2).fit(model, make_loader())
    assert [t.qualname for t in callback.targets] == ["fc1.weight", "fc2.weight"]
    param = model.fc1.weight if make_permanent else model.fc1.weight_orig
    assert isinstance(param, nn.Parameter) and not param.requires_grad
    effective = model.fc1.weight.detach()
    assert int((effective == 0).sum()) == round(0.7 * effective.numel())
    kept = effective != 0
    assert torch.equal(effective[kept], frozen_before[kept]), "a frozen weight must not train"
    assert int((model.fc2.weight == 0).sum()) == round(0.7 * model.fc2.weight.numel())


class WithEmptyLayer(TinyNet):
    """:class:`TinyNet` plus ``Linear(0, 3)``, whose weight has no entries at all."""

    def __init__(self) -> None:
        super().__init__()
        self.empty = nn.Linear(0, 3)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.empty(x[:, :0])


@pytest.mark.parametrize(
    ("method", "scope"),
    [
        pytest.param("l1_unstructured", "layer", id="l1_layer"),
        pytest.param("l1_unstructured", "global", id="l1_global"),
        pytest.param("random_unstructured", "global", id="random_global"),
        pytest.param("ln_structured", "layer", id="ln_structured_layer"),
        pytest.param("ln_structured", "global", id="ln_structured_global"),
        pytest.param("random_structured", "layer", id="random_structured_layer"),
    ],
)
def test_empty_tensors_do_not_crash(tmp_path: Path, method: str, scope: str) -> None:
    torch.manual_seed(0)
    model = WithEmptyLayer()
    callback = PruningCallback(method=method, scope=scope, schedule=Explicit({0: 0.3, 1: 0.5}), make_permanent=False)
    make_trainer(tmp_path, callbacks=[callback], max_epochs=2, enable_checkpointing=True).fit(model, make_loader())
    masks = masks_of(model)
    assert sorted(masks) == ["empty.weight", "fc1.weight", "fc2.weight"]
    assert masks["empty.weight"].shape == (3, 0)
    assert list((tmp_path / "checkpoints").glob("*.ckpt")), "a checkpoint with an empty mask was written"
    if method.endswith("_unstructured"):
        pruned = {n: int((~m).sum()) for n, m in masks.items()}
        if scope == "layer":
            assert pruned == {"empty.weight": 0, "fc1.weight": round(0.5 * 91), "fc2.weight": round(0.5 * 39)}
        else:
            assert pruned["empty.weight"] == 0
            assert pruned["fc1.weight"] + pruned["fc2.weight"] == round(0.5 * 130)
    else:
        rows = {n: int((~masks[n].any(dim=1)).sum()) for n in ("fc1.weight", "fc2.weight")}
        if scope == "layer":
            assert rows == {"fc1.weight": round(0.5 * 13), "fc2.weight": round(0.5 * 3)}
        else:  # the empty tensor's 3 rows, which hold no entries, count neither as pruned nor as rows to prune
            assert sum(rows.values()) == round(0.5 * (13 + 3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"scope": "Global"}, r"`scope`.*'layer' or 'global'.*'Global'", id="scope"),
        pytest.param({"sparsity": 1.5}, r"`sparsity`.*\[0, 1\].*1\.5", id="above-1"),
        pytest.param({"sparsity": float("nan")}, r"`sparsity`.*nan", id="nan"),
        pytest.param({"sparsity": True}, r"`sparsity`.*True", id="bool"),
        pytest.param({"masks": [torch.ones(13, 7, dtype=torch.bool)]}, r"one mask per target \(2\), got 1", id="masks"),
    ],
)
def test_compute_masks_checks_its_arguments(kwargs: dict[str, Any], match: str) -> None:
    targets = resolve_targets(make_model())
    arguments = {"sparsity": 0.5, "scope": "layer", **kwargs}
    with pytest.raises(ValueError, match=match):
        core.compute_masks(targets, resolve_method("l1_unstructured"), **arguments)


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        pytest.param([(13, 7), (5,)], r"mask of shape \(3, 13\) for `weight`, got \(5,\)", id="second-shape"),
        pytest.param([(13, 7)], r"one mask per target \(2\), got 1", id="count"),
    ],
)
def test_commit_masks_checks_every_mask_before_any_change(masks: list[tuple[int, ...]], match: str) -> None:
    model = make_model()
    before = snapshot_state(model)
    with pytest.raises(ValueError, match=match):
        core.commit_masks(resolve_targets(model), [torch.zeros(shape, dtype=torch.bool) for shape in masks])
    assert_same_state(before, model)
    assert not prune.is_pruned(model)


def test_meta_parameters_are_refused_before_training(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = make_model()
    trainer = make_trainer(tmp_path, callbacks=[PruningCallback(schedule=0.5)], max_epochs=1)
    with pytest.raises(Exception) as info:  # Lightning's teardown then fails too, moving the meta model
        trainer.fit(model, make_loader())
    chain = [info.value]
    while chain[-1].__context__ is not None:
        chain.append(chain[-1].__context__)
    assert any("Targets ['fc1.weight', 'fc2.weight'] are on the meta device" in str(e) for e in chain)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"norm": 1}, r"`method='l1_unstructured'` takes no `norm`", id="l1-norm"),
        pytest.param({"dim": 1, "norm": 1}, r"takes no `dim` or `norm`", id="l1-dim-norm"),
        pytest.param({"dim": 0}, r"takes no `dim`", id="l1-dim-given-as-the-default"),
        pytest.param({"method": "random_structured", "norm": 1}, r"'random_structured'` takes no `norm`", id="random"),
        pytest.param({"method": "ln_structured", "dim": 1, "norm": 1}, None, id="ln-takes-both"),
        pytest.param(
            {"method": prune.L1Unstructured, "dim": 1, "norm": 3}, r"takes no `dim` or `norm`", id="custom-neither"
        ),
        pytest.param({"method": prune.RandomStructured, "norm": 3}, r"takes no `norm`", id="custom-takes-no-n"),
        pytest.param({"method": prune.LnStructured, "dim": 1, "norm": 1}, None, id="custom-takes-both"),
    ],
)
def test_arguments_a_method_ignores_warn(kwargs: dict[str, Any], match: str | None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PruningCallback(**kwargs)
    messages = [str(w.message) for w in caught if "takes no" in str(w.message)]
    assert len(messages) == (0 if match is None else 1) and all(re.search(match, m) for m in messages if match)


class _WeightNormed(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        nn.utils.parametrizations.weight_norm(self.fc1)


def test_default_targets_that_leave_out_a_parametrized_weight_warn(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, callbacks=[PruningCallback(schedule=0.5)], max_epochs=1).fit(
            make_model(cls=_WeightNormed), make_loader()
        )
    messages = [str(w.message) for w in caught if "leave out" in str(w.message)]
    assert len(messages) == 1 and "['fc1.weight']" in messages[0]
    assert "['fc1.parametrizations.weight.original0', 'fc1.parametrizations.weight.original1']" in messages[0]


class _WithNorm(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(self.fc1.out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


@pytest.mark.parametrize("use_buffers", [True, False])
@pytest.mark.parametrize("cls", [TinyNet, _WithNorm])
def test_weight_averaging_refuses_the_reparametrization_before_training(tmp_path, cls, use_buffers) -> None:
    """EMAWeightAveraging pairs parameters and buffers with those of a copy made before the masks: the
    mask buffers would be copied into a batch norm's, or fail its strict pairing (`use_buffers=False`)."""
    EMAWeightAveraging = ema_weight_averaging()

    model = make_model(cls=cls)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    averaging = EMAWeightAveraging(use_buffers=use_buffers)
    trainer = make_trainer(tmp_path, callbacks=[PruningCallback(schedule=0.5), averaging], max_epochs=2)
    with pytest.raises(ValueError, match=r"EMAWeightAveraging pairs .* Use `masking='in_place'`"):
        trainer.fit(model, make_loader())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_weight_averaging_refuses_the_reparametrization_of_a_model_pruned_before(tmp_path) -> None:
    """Its averaged copy would hold the masks of the fit before, and their average would come back
    over the masks of this fit."""
    EMAWeightAveraging = ema_weight_averaging()

    model = make_model()
    make_trainer(tmp_path, callbacks=[PruningCallback(schedule=0.3, make_permanent=False)], max_epochs=1).fit(
        model, make_loader()
    )
    again = make_trainer(tmp_path, callbacks=[PruningCallback(schedule=0.6), EMAWeightAveraging()], max_epochs=1)
    with pytest.raises(ValueError, match=r"EMAWeightAveraging pairs"):
        again.fit(model, make_loader())


def test_an_exclude_pattern_that_takes_out_no_target_warns(tmp_path: Path) -> None:
    callback = PruningCallback(schedule=0.5, exclude=["fc2.bias"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, callbacks=[callback], max_epochs=1).fit(make_model(), make_loader())
    messages = [str(w.message) for w in caught if "`exclude`" in str(w.message)]
    assert messages == [
        "`exclude` patterns ['fc2.bias'] match no target (of ['fc1.weight', 'fc2.weight']): they take nothing out"
    ]


def test_excluding_every_name_of_a_tied_weight_does_not_warn(tmp_path: Path) -> None:
    callback = PruningCallback(schedule=0.5, exclude=["fc_a.weight", "fc_b.weight"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, callbacks=[callback], max_epochs=1).fit(TiedNet(), make_loader())
    assert not [w for w in caught if "`exclude`" in str(w.message)]
    assert [t.qualname for t in callback.targets] == ["out.weight"]


class _LazyHead(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.LazyLinear(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(super().forward(x))


def test_excluding_a_lazy_layer_neither_fails_nor_warns(tmp_path: Path) -> None:
    callback = PruningCallback(schedule=0.5, exclude=["head.weight"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, callbacks=[callback], max_epochs=1).fit(make_model(cls=_LazyHead), make_loader())
    assert not [w for w in caught if "`exclude`" in str(w.message)]
    assert [t.qualname for t in callback.targets] == ["fc1.weight", "fc2.weight"]


def test_a_rewind_to_the_start_of_a_lazy_model_fails_before_training(tmp_path: Path) -> None:
    callback = PruningCallback(schedule=0.5, targets=["fc1.weight"], rewind=Rewind(epoch=0))
    model = make_model(cls=_LazyHead)
    before = model.fc1.weight.detach().clone()
    message = (
        r"`rewind=Rewind\(epoch=0, reinit=False\)` snapshots .* \['head.weight', 'head.bias'\] are not initialised"
    )
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, callbacks=[callback], max_epochs=2).fit(model, make_loader())
    assert torch.equal(model.fc1.weight, before)
    # a batch through it first, as the message says
    model(next(iter(make_loader()))[0])
    make_trainer(tmp_path, callbacks=[callback], max_epochs=2).fit(model, make_loader())


def test_norm_inf_is_accepted() -> None:
    """The one string `norm` allows (and its spelling as YAML writes it)."""
    for norm in ("inf", math.inf):
        PruningCallback(method="ln_structured", norm=norm)


def test_exclude_none_excludes_nothing(tmp_path: Path) -> None:
    callback = PruningCallback(schedule=0.5, exclude=None)
    assert callback.exclude == [] and callback.state_key == PruningCallback(schedule=0.5).state_key
    make_trainer(tmp_path, callbacks=[callback], max_epochs=1).fit(make_model(), make_loader())
    assert [t.qualname for t in callback.targets] == ["fc1.weight", "fc2.weight"]


def test_bad_schedule_value_past_max_epochs_is_not_asked_for(tmp_path: Path) -> None:
    """The check asks for the epochs this fit can run; a later fit with more epochs fails at its setup."""
    callback = PruningCallback(schedule=AtEpochOne(1.5))
    make_trainer(tmp_path, callbacks=[callback], max_epochs=1).fit(make_model(), make_loader())
    with pytest.raises(ValueError, match="returned 1.5 for epoch 1"):
        make_trainer(tmp_path, callbacks=[callback], max_epochs=2).fit(make_model(), make_loader())


@pytest.mark.parametrize(
    ("schedule", "max_epochs", "match"),
    [
        pytest.param(Linear(0.9, 0, 26), 3, r"after epoch 26 \(to 0\.9\).*stops after epoch 2.*at most", id="ramp"),
        pytest.param(Constant(0.5, start_epoch=5), 3, r"after epoch 5.*reaches no event", id="constant-later"),
        pytest.param(Geometric(0.2, start_epoch=4), 3, r"no event that prunes within this fit", id="geometric-later"),
        pytest.param(Linear(0.9, 0, 26), 27, None, id="ramp-within"),
        pytest.param(Geometric(0.2), 3, None, id="open-ended"),
        pytest.param(Explicit({0: 0.5, 1: 0.8, 9: 0.8}), 3, None, id="later-event-prunes-nothing"),
    ],
)
def test_a_schedule_cut_short_by_max_epochs_warns(tmp_path: Path, schedule: Schedule, max_epochs: int, match) -> None:
    callback = PruningCallback(schedule=schedule)
    trainer = make_trainer(tmp_path, callbacks=[callback], max_epochs=max_epochs, limit_train_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(make_model(), make_loader())
    messages = [str(w.message) for w in caught if str(w.message).startswith("`schedule`")]
    if match is None:
        assert not messages
    else:
        assert len(messages) == 1 and re.search(match, messages[0]), messages


def test_schedule_is_checked_when_steps_bound_the_fit(tmp_path: Path) -> None:
    """`max_steps` leaves `max_epochs` unbounded: the first 1,000 epochs are asked at `setup`."""
    model = make_model()
    before, counter = snapshot_state(model), BatchCounter()
    with pytest.raises(ValueError, match="returned 1.5 for epoch 1"):
        make_trainer(
            tmp_path, callbacks=[PruningCallback(schedule=AtEpochOne(1.5)), counter], max_epochs=None, max_steps=6
        ).fit(model, make_loader())
    assert counter.batches == 0
    assert_same_state(before, model)


def test_schedule_values_of_other_real_types_are_taken(tmp_path: Path) -> None:
    """A numpy float, say, from a schedule computed with numpy."""
    import numpy as np

    model = make_model()
    make_trainer(tmp_path, callbacks=[PruningCallback(schedule=AtEpochOne(np.float32(0.5)))], max_epochs=2).fit(
        model, make_loader()
    )
    assert int((model.fc1.weight == 0).sum()) == round(0.5 * model.fc1.weight.numel())


def test_a_bad_pattern_fails_before_a_checkpoint_or_a_tuner_changes_the_weights(tmp_path: Path) -> None:
    """`setup` resolves the targets, before Lightning loads a checkpoint and before a tuner callback runs
    its steps (Lightning puts those first, and they run in `on_fit_start`)."""
    trainer = make_trainer(tmp_path, callbacks=[], max_epochs=1)
    trainer.fit(make_model(seed=3), make_loader())
    trainer.save_checkpoint(tmp_path / "other.ckpt")
    model = make_model()
    before = snapshot_state(model)
    counter = BatchCounter()
    callbacks = [LearningRateFinder(num_training_steps=5), PruningCallback(targets=["nope.*"]), counter]
    with pytest.raises(ValueError, match="`targets` pattern 'nope.\\*' matches no parameter"):
        make_trainer(tmp_path, callbacks=callbacks, max_epochs=2).fit(
            model, make_loader(), ckpt_path=tmp_path / "other.ckpt"
        )
    assert counter.batches == 0
    assert_same_state(before, model)


def test_a_structured_custom_method_without_dim_prunes_once(tmp_path: Path) -> None:
    callback = PruningCallback(method=StructuredWithoutDim, schedule=0.5, make_permanent=False)
    make_trainer(tmp_path, callbacks=[callback], max_epochs=2).fit(make_model(), make_loader())
    assert [t.qualname for t in callback.targets] == ["fc1.weight", "fc2.weight"]


def test_a_structured_custom_method_without_dim_accepts_an_event_to_zero(tmp_path: Path) -> None:
    """A ramp's first event, to sparsity 0, prunes nothing, so the method still prunes once."""
    masks = []
    for events in (Linear(0.5, start_epoch=0, end_epoch=1), Explicit({1: 0.5})):
        callback = PruningCallback(method=FirstRowsWithoutDim, schedule=events, make_permanent=False)
        make_trainer(tmp_path, callbacks=[callback], max_epochs=2).fit(make_model(), make_loader())
        masks.append(dict(zip(WEIGHTS, callback._current_masks())))
    assert_tensors_equal(masks[0], masks[1])
    assert all(0 < m.sum() < m.numel() for m in masks[0].values())
