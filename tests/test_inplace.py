"""``masking="in_place"``: plain parameters, masks kept by the callback, gradients and weights kept at zero."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.nn.utils import prune

from lightning_prune import PruningCallback, Rewind, core, inplace
from lightning_prune.inplace import ZERO_PRESERVING, InPlaceMasks
from lightning_prune.schedules import Explicit
from lightning_prune.targets import resolve_targets
from tests.helpers import ema_weight_averaging, free_port, make_lenet_trainer
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
    trainer = make_lenet_trainer(tmp_path, [callback, *extra], epochs=epochs)
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


def test_stored_masks_are_copies_unless_handed_over() -> None:
    layer = torch.nn.Linear(3, 2, bias=False)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    masks = InPlaceMasks()
    masks.commit(resolve_targets(layer), [mask])
    mask[0, 0] = False  # the caller's tensor is its own
    assert masks.masks["weight"].tolist() == [[True, False, True], [False, True, True]]
    handed = torch.ones(2, 3, dtype=torch.bool)
    masks.commit(resolve_targets(layer), [handed], replace=True, copy=False)
    assert masks.masks["weight"] is handed


def test_bad_masking() -> None:
    with pytest.raises(ValueError, match="`masking` to be 'reparametrize' or 'in_place', got 'lazy'"):
        PruningCallback(masking="lazy")  # type: ignore[arg-type]


class FailAt(Callback):
    """Raise at the first batch of ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("failing on purpose")


def test_failed_fit_detaches_from_the_optimizer(tmp_path) -> None:
    callback = PruningCallback(schedule=Explicit({0: 0.5}), masking="in_place")
    model = LitLeNet()
    trainer = make_lenet_trainer(tmp_path, [callback, FailAt(1)])
    with pytest.raises(RuntimeError, match="failing on purpose"):
        trainer.fit(model, lenet_data())
    assert not trainer.optimizers[0]._optimizer_step_post_hooks
    masks = callback._held_masks()
    assert masks and all(m.device.type == "cpu" for m in masks.values())

    resumed = _fit(callback, tmp_path / "again", epochs=1, model=model)  # the masks carry over
    for name, mask in masks.items():
        assert resumed.get_parameter(name)[~mask].eq(0).all(), name


OPTIMIZERS = [
    (torch.optim.SGD, {"lr": 0.1}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.5, "foreach": False, "maximize": True}),
    (torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    (torch.optim.Adam, {"lr": 0.01, "foreach": False}),
    (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.5}),
    (torch.optim.Adagrad, {"lr": 0.1, "initial_accumulator_value": 0.5, "weight_decay": 0.1}),
    (torch.optim.Adadelta, {"lr": 1.0, "weight_decay": 0.1}),
    (torch.optim.Adamax, {"lr": 0.01, "weight_decay": 0.1}),
    (torch.optim.NAdam, {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    (torch.optim.RAdam, {"lr": 0.01, "weight_decay": 0.1}),
    (torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 0.1}),
    (torch.optim.Rprop, {"lr": 0.01}),
    (torch.optim.ASGD, {"lr": 0.01, "t0": 1, "weight_decay": 0.1}),
]


@pytest.mark.parametrize(("cls", "options"), OPTIMIZERS, ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_zero_preserving_optimizers_match_torch_reparametrization(cls, options) -> None:
    check_zero_preserving(cls, options, "cpu")


def check_zero_preserving(cls: type[torch.optim.Optimizer], options: dict, device: str) -> None:
    """Masked gradients and zeroed state keep pruned entries at zero with no per-step pass, and every
    weight equals ``torch.nn.utils.prune``'s ``orig * mask`` trained alongside (``torch.equal``: a pruned
    zero may differ in sign)."""
    assert cls in ZERO_PRESERVING
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(device)
    ref = copy.deepcopy(ours)
    opts = [cls(ours.parameters(), **options), cls(ref.parameters(), **options)]
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(12)]
    batches = [(x.to(device), y.to(device)) for x, y in batches]

    def step(model, opt, batch) -> None:
        opt.zero_grad()
        F.cross_entropy(model(batch[0]), batch[1]).backward()
        opt.step()

    for batch in batches[:4]:  # dense steps first: momentum and moments are non-zero where pruning comes
        step(ours, opts[0], batch)
        step(ref, opts[1], batch)
    masks = [(torch.rand(m.weight.shape, generator=g) > 0.5).to(device) for m in (ours[0], ours[2])]
    held = InPlaceMasks()
    held.commit(resolve_targets(ours), masks)
    held.attach([opts[0]])
    for module, mask in zip((ref[0], ref[2]), masks):
        prune.custom_from_mask(module, "weight", mask)
    assert not held._step_handles
    for batch in batches[4:]:
        step(ours, opts[0], batch)
        step(ref, opts[1], batch)
        for m_ours, m_ref, mask in zip((ours[0], ours[2]), (ref[0], ref[2]), masks):
            assert m_ours.weight[~mask].eq(0).all() and m_ours.weight.grad[~mask].eq(0).all()
            assert torch.equal(m_ours.weight, m_ref.weight_orig * m_ref.weight_mask)
            assert torch.equal(m_ours.bias, m_ref.bias)


def _penalty_by_autograd_grad(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """A gradient-norm penalty: gradients by ``torch.autograd.grad`` with ``create_graph=True``."""
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    return loss + sum(g.pow(2).sum() for g in grads)


def _penalty_by_backward(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """A linear term in the gradients (a Hessian-vector product): ``backward(create_graph=True)``."""
    loss.backward(create_graph=True)
    return sum((p.grad * torch.linspace(-1, 1, p.numel()).view_as(p)).sum() for p in model.parameters())


PENALTIES = [_penalty_by_autograd_grad, _penalty_by_backward]


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("penalty", PENALTIES, ids=["autograd.grad", "backward"])
def test_second_order_terms_match_torch_reparametrization(penalty) -> None:
    """Gradients differentiated again see the masked gradients of ``<name>_orig``, pruned entries included."""
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    ref = copy.deepcopy(ours)
    masks = [torch.rand(5, 6) > 0.5, torch.rand(3, 5) > 0.5]
    held = InPlaceMasks()
    held.commit(resolve_targets(ours), masks)
    for module, mask in zip((ref[0], ref[2]), masks):
        prune.custom_from_mask(module, "weight", mask)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ours, ref)]
    held.attach([opts[0]])
    x = torch.randn(8, 6)
    for _ in range(3):
        for model, opt in zip((ours, ref), opts):
            opt.zero_grad(set_to_none=True)
            penalty(model, model(x).pow(2).mean()).backward()
            opt.step()
        for m_ours, m_ref, mask in zip((ours[0], ours[2]), (ref[0], ref[2]), masks):
            assert m_ours.weight[~mask].eq(0).all()
            assert torch.equal(m_ours.weight, m_ref.weight_orig * m_ref.weight_mask)
            assert torch.equal(m_ours.bias, m_ref.bias)


class Drift(torch.optim.Optimizer):
    """Moves every entry, whatever its gradient (as some optimizers' extra terms do)."""

    def __init__(self, params) -> None:
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(0.25)


class SubclassedSGD(torch.optim.SGD):
    """Not in ZERO_PRESERVING (matched by exact type): its step could do anything."""


@pytest.mark.parametrize("cls", [Drift, SubclassedSGD])
def test_other_optimizers_get_weights_zeroed_after_each_step(cls) -> None:
    layer = torch.nn.Linear(4, 3)
    opt = cls(layer.parameters()) if cls is Drift else cls(layer.parameters(), lr=0.1, momentum=0.9)
    mask = torch.rand(3, 4) > 0.5
    held = InPlaceMasks()
    held.commit(resolve_targets(layer, ["weight"]), [mask])
    held.attach([opt])
    assert len(held._step_handles) == 2  # before the step (its closure) and after it
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(2, 4)).sum().backward()
        assert layer.weight.grad[~mask].eq(0).all()
        opt.step()
        assert layer.weight[~mask].eq(0).all() and layer.weight[mask].ne(0).all()
    held.detach()
    if cls is Drift:
        opt.step()
        assert layer.weight[~mask].ne(0).all(), "detached: nothing runs any more"


class LBFGSLeNet(LitLeNet):
    """Steps with ``LBFGS``, which moves the weights and evaluates the closure again within one step;
    counts the forwards whose pruned weights are not zero."""

    def __init__(self, callback: PruningCallback, line_search: str | None) -> None:
        super().__init__()
        self.callback, self.line_search, self.unmasked_forwards = callback, line_search, 0

    def training_step(self, batch, batch_idx):
        held = self.callback._held_masks() if self.callback.masking == "in_place" else None
        for name, mask in (held or {}).items():
            self.unmasked_forwards += int(self.get_parameter(name).detach()[~mask].ne(0).any())
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=3, line_search_fn=self.line_search)


@pytest.mark.parametrize("line_search", [None, "strong_wolfe"])
def test_lbfgs_evaluations_within_a_step_see_the_masks(tmp_path, line_search: str | None) -> None:
    """After an event LBFGS's history still moves the newly pruned weights; every forward inside its
    step must see them at zero, as the reparametrization's forward does."""
    results = {}
    for masking in ("reparametrize", "in_place"):
        callback = PruningCallback(schedule=Explicit({0: 0.5, 1: 0.7}), masking=masking)
        torch.manual_seed(0)
        model = LBFGSLeNet(callback, line_search)
        make_lenet_trainer(tmp_path / masking, [callback], epochs=3).fit(model, lenet_data())
        results[masking] = {n: p.detach().clone() for n, p in model.named_parameters()}
        if masking == "in_place":
            assert model.unmasked_forwards == 0
            assert callback._inplace is not None and not callback._inplace.per_step  # detached after fit
    for name, value in results["reparametrize"].items():
        torch.testing.assert_close(results["in_place"][name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("positional", [True, False])
def test_closure_reevaluations_start_from_masked_weights(positional: bool) -> None:
    """``step(closure)`` and ``step(closure=closure)`` alike; the history LBFGS gathered before the mask
    moves the pruned weights, and each further evaluation still sees them at zero."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    x, y = torch.randn(16, 6), torch.randn(16, 4)
    opt = torch.optim.LBFGS(layer.parameters(), lr=0.5, max_iter=4, history_size=3)
    held = InPlaceMasks()
    held.attach([opt])
    seen = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        if held.masks:
            seen.append(bool(layer.weight.detach()[~held.masks["weight"]].ne(0).any()))
        loss = F.mse_loss(layer(x), y)
        loss.backward()
        return loss

    opt.step(closure)  # history before any pruning
    mask = torch.rand(4, 6) > 0.5
    held.commit(resolve_targets(layer, ["weight"]), [mask])
    assert held.per_step
    opt.step(closure) if positional else opt.step(closure=closure)
    assert len(seen) > 1 and not any(seen)
    assert layer.weight.detach()[~mask].eq(0).all()


class ClippedLeNet(LitLeNet):
    def __init__(self, optimizer: type[torch.optim.Optimizer]) -> None:
        super().__init__()
        self.optimizer = optimizer

    def configure_optimizers(self):
        return self.optimizer(self.parameters(), lr=0.1, momentum=0.9)


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, SubclassedSGD])
def test_gradient_clipping_sees_the_reparametrization_gradients(tmp_path, optimizer) -> None:
    """Clipping by the gradient norm: pruned entries' gradients are zero in both modes, so the weights agree."""
    results = {}
    for masking in ("reparametrize", "in_place"):
        torch.manual_seed(0)
        model = ClippedLeNet(optimizer)
        callback = PruningCallback(scope="global", schedule=Explicit({0: 0.5}), masking=masking)
        make_lenet_trainer(tmp_path, [callback], gradient_clip_val=0.05).fit(model, lenet_data())
        results[masking] = {n: model.get_parameter(n).detach().clone() for n in WEIGHTS}
    for name in WEIGHTS:
        torch.testing.assert_close(results["in_place"][name], results["reparametrize"][name], rtol=0, atol=1e-7)


def test_weight_frozen_when_attached_is_zeroed_after_steps_until_hooked() -> None:
    layer = torch.nn.Linear(5, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    mask = torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) > 0.5
    held = InPlaceMasks()
    layer.weight.requires_grad_(False)
    held.commit(resolve_targets(layer, ["weight"]), [mask])
    held.attach([opt])
    assert held.per_step, "no gradient hook on a frozen weight: zeroed after every step"

    def steps(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            layer(torch.randn(3, 5)).pow(2).sum().backward()
            opt.step()
            assert layer.weight[~mask].eq(0).all()

    steps(2)
    layer.weight.requires_grad_(True)  # unfrozen: unmasked gradients fill the momentum at pruned entries
    steps(2)
    assert opt.state[layer.weight]["momentum_buffer"][~mask].ne(0).all()
    held.refresh_hooks()
    assert not held.per_step
    assert opt.state[layer.weight]["momentum_buffer"][~mask].eq(0).all(), "state zeroed with the new hook"
    steps(3)


class Backbone(LitLeNet):
    """LeNet whose convolutions are a backbone that ``BackboneFinetuning`` freezes, then unfreezes."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.ModuleList([self.conv1, self.conv2])

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=0.01)


@pytest.mark.parametrize("order", ["pruning-first", "finetuning-first"])
def test_backbone_unfrozen_after_pruning_keeps_its_zeros(tmp_path, order: str) -> None:
    """BackboneFinetuning unfreezes at an epoch start and adds a parameter group; with clipping, too."""
    from lightning.pytorch.callbacks import BackboneFinetuning

    results = {}
    for masking in ("reparametrize", "in_place"):
        torch.manual_seed(0)
        model = Backbone()
        unfreeze = BackboneFinetuning(unfreeze_backbone_at_epoch=2, backbone_initial_ratio_lr=1.0)
        callback = PruningCallback(schedule=Explicit({0: 0.5}), masking=masking)
        callbacks = [callback, unfreeze] if order == "pruning-first" else [unfreeze, callback]
        trainer = make_lenet_trainer(tmp_path, callbacks, epochs=4, gradient_clip_val=0.05)
        torch.manual_seed(0)
        trainer.fit(model, lenet_data())
        results[masking] = {n: model.get_parameter(n).detach().clone() for n in WEIGHTS}
    for name in WEIGHTS:
        assert int((results["in_place"][name] == 0).sum()) == round(0.5 * results["in_place"][name].numel()), name
        torch.testing.assert_close(results["in_place"][name], results["reparametrize"][name], rtol=0, atol=1e-6)


class Unfreeze(Callback):
    """Freeze ``conv1`` for the fit; unfreeze it at (epoch, batch), rebuilding the optimizers if asked."""

    def __init__(self, at: tuple[int, int], rebuild: bool) -> None:
        self.at, self.rebuild = at, rebuild

    @staticmethod
    def weight(pl_module) -> torch.nn.Parameter:  # `weight_orig` once reparametrized
        return next(p for n, p in pl_module.conv1.named_parameters() if n.startswith("weight"))

    def setup(self, trainer, pl_module, stage) -> None:
        self.weight(pl_module).requires_grad_(False)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == self.at:
            self.weight(pl_module).requires_grad_(True)
            if self.rebuild:
                trainer.strategy.setup_optimizers(trainer)


class AdamLeNet(LitLeNet):
    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=0.01)


class GradientNorms(Callback):
    """The norm of every weight's gradient right after each backward."""

    def __init__(self) -> None:
        self.norms: list[list[float]] = []

    def on_after_backward(self, trainer, pl_module) -> None:
        params = dict(pl_module.named_parameters())
        grads = [params.get(n + "_orig", params.get(n)).grad for n in WEIGHTS]
        self.norms.append([0.0 if g is None else float(g.norm()) for g in grads])


@pytest.mark.parametrize("rebuild", [pytest.param(False, id="unfrozen"), pytest.param(True, id="optimizer-rebuilt")])
def test_weight_unfrozen_mid_epoch_matches_reparametrization(tmp_path, rebuild: bool) -> None:
    """Unfrozen at a batch in the middle of an epoch (optimizers rebuilt or not), under gradient clipping:
    the same gradients from the first backward on, and the same weights."""
    results, norms = {}, {}
    for masking in ("reparametrize", "in_place"):
        torch.manual_seed(0)
        model = AdamLeNet() if rebuild else ClippedLeNet(torch.optim.SGD)
        callback = PruningCallback(schedule=Explicit({0: 0.5}), masking=masking)
        check = ZerosAfterEveryStep(callback) if masking == "in_place" else Callback()
        norms[masking] = GradientNorms()
        callbacks = [callback, Unfreeze((1, 2), rebuild), check, norms[masking]]
        make_lenet_trainer(tmp_path, callbacks, gradient_clip_val=0.05).fit(model, lenet_data())
        results[masking] = {n: model.get_parameter(n).detach().clone() for n in WEIGHTS}
    assert int((results["in_place"]["conv1.weight"] == 0).sum()) == 75
    torch.testing.assert_close(norms["in_place"].norms, norms["reparametrize"].norms, rtol=1e-6, atol=0)
    for name in WEIGHTS:
        torch.testing.assert_close(results["in_place"][name], results["reparametrize"][name], rtol=0, atol=1e-6)


class TwoOptimizers(LitLeNet):
    """Manual optimization: the convolutions and the linear layers take turns, each with its own optimizer;
    the linear layers' turn adds a gradient penalty through ``manual_backward(create_graph=True)``."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        convs, linears = self.optimizers()
        for opt, penalty in ((convs, False), (linears, True)):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self(x), y)
            if penalty:
                self.manual_backward(loss, create_graph=True)
                self.manual_backward(sum(p.grad.sum() for p in self.fc1.parameters()))
            else:
                self.manual_backward(loss)
            opt.step()

    def configure_optimizers(self):
        convs = [p for n, p in self.named_parameters() if n.startswith("conv")]
        linears = [p for n, p in self.named_parameters() if n.startswith("fc")]
        return torch.optim.SGD(convs, lr=0.05, momentum=0.9), torch.optim.Adam(linears, lr=0.01)


class OwnOptimizer(LitLeNet):
    """Manual optimization with an optimizer the module makes and steps itself, not one the Trainer knows: for
    every weight (``configure_optimizers`` returns none), for the linear layers beside the Trainer's for the
    convolutions, for the same weights as the Trainer's (each taking half the step), or given the linear
    layers in a parameter group added after its first step."""

    def __init__(self, share: str) -> None:
        super().__init__()
        self.automatic_optimization, self.share = False, share

    def on_fit_start(self) -> None:
        params = [p for n, p in self.named_parameters() if self.share in ("all", "same") or n.startswith("fc")]
        self.own = torch.optim.SGD(params if self.share != "later" else [self.conv1.bias], lr=0.025, momentum=0.9)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.share == "later" and self.global_step == 1:
            self.own.add_param_group({"params": [p for n, p in self.named_parameters() if n.startswith("fc")]})
        optimizers = [self.own] if self.share == "all" else [self.optimizers().optimizer, self.own]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.manual_backward(F.cross_entropy(self(x), y))
        for opt in optimizers:
            opt.step()

    def configure_optimizers(self):
        if self.share == "all":
            return None
        params = [p for n, p in self.named_parameters() if self.share == "same" or n.startswith("conv")]
        return torch.optim.SGD(params, lr=0.025, momentum=0.5)


@pytest.mark.parametrize("share", ["all", "beside", "same", "later"])
def test_an_optimizer_the_trainer_does_not_know_keeps_pruned_weights_at_zero(tmp_path, share: str) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`configure_optimizers` returned `None`")
        _both_maskings(tmp_path, lambda: OwnOptimizer(share), Explicit({0: 0.5, 1: 0.7}))


def test_masks_attached_and_never_detached_are_not_kept_alive() -> None:
    """The global hook after every optimizer's step holds no reference to the masks, and goes once they are gone."""
    import gc
    import weakref

    from torch.optim.optimizer import _global_optimizer_post_hooks, register_optimizer_step_post_hook

    layer = torch.nn.Linear(3, 2)
    masks = InPlaceMasks()
    masks.commit(resolve_targets(layer), [torch.tensor([[True, False, True], [False, True, True]])])
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    masks.attach([opt])
    hook = masks._any_step.id
    assert hook in _global_optimizer_post_hooks
    gone = weakref.ref(masks)
    del masks, opt, layer
    gc.collect()
    assert gone() is None
    other = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    later = register_optimizer_step_post_hook(lambda *args: None)
    other.step()  # the hook finds the masks gone and does nothing (removing itself, it would break the iteration)
    later.remove()
    again = InPlaceMasks()
    again.attach([other])  # and goes with the next registration
    assert hook not in _global_optimizer_post_hooks
    current = again._any_step.id
    assert current in _global_optimizer_post_hooks
    again.detach()
    assert current not in _global_optimizer_post_hooks
    for _ in range(3):  # masks attached again and again while they live hold one entry at most
        again.attach([other])
    assert [ref() for ref, _ in inplace._AFTER_ANY_STEP].count(again) == 1
    again.detach()
    assert [ref() for ref, _ in inplace._AFTER_ANY_STEP].count(again) == 0


def _both_maskings(tmp_path, build, schedule, scope: str = "layer") -> dict[str, torch.Tensor]:
    """Fit ``build()`` with either masking (checking the zeros after every ``in_place`` step); assert the
    weights agree and return ``in_place``'s."""
    results = {}
    for masking in ("reparametrize", "in_place"):
        callback = PruningCallback(scope=scope, schedule=schedule, masking=masking)
        check = ZerosAfterEveryStep(callback) if masking == "in_place" else Callback()
        torch.manual_seed(0)
        model = _fit(callback, tmp_path / masking, extra=[check], model=build())
        results[masking] = {n: model.get_parameter(n).detach().clone() for n in WEIGHTS}
    for name in WEIGHTS:
        torch.testing.assert_close(results["in_place"][name], results["reparametrize"][name], rtol=0, atol=1e-6)
    return results["in_place"]


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_manual_optimization_matches_reparametrization(tmp_path) -> None:
    weights = _both_maskings(tmp_path, TwoOptimizers, Explicit({0: 0.5, 2: 0.7}), scope="global")
    total = sum(w.numel() for w in weights.values())
    assert sum(int((w == 0).sum()) for w in weights.values()) == round(0.7 * total)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_weight_cast_after_attach_keeps_its_gradient_dtype() -> None:
    """``model.to(torch.bfloat16)`` after attach: the masked gradient stays in the weight's dtype."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    mask = torch.rand(4, 6) > 0.5
    held = InPlaceMasks()
    held.commit(resolve_targets(layer, ["weight"]), [mask])
    held.attach([torch.optim.SGD(layer.parameters(), lr=0.1)])
    layer.to(torch.bfloat16)
    layer(torch.randn(3, 6, dtype=torch.bfloat16)).float().pow(2).sum().backward(create_graph=True)
    assert layer.weight.grad.dtype == torch.bfloat16 and layer.weight.grad[~mask].eq(0).all()


def test_restored_state_still_commits() -> None:
    layer = torch.nn.Linear(6, 4)
    targets = resolve_targets(layer, ["weight"])
    held = InPlaceMasks()
    held.commit(targets, [torch.rand(4, 6) > 0.3])
    restored = InPlaceMasks.__new__(InPlaceMasks)
    restored.__dict__.update(held.__getstate__())
    mask = torch.rand(4, 6) > 0.5
    restored.commit(targets, [mask])
    assert layer.weight[~mask].eq(0).all()


def test_later_events_write_the_float_masks_in_place() -> None:
    """An event allocates no new float masks (4 bytes per weight); hooks and steps see the new ones."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    held = InPlaceMasks()
    targets = resolve_targets(layer, ["weight"])
    first = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.3
    held.commit(targets, [first])
    held.attach([opt])
    factor = held._factors[0]
    second = first & (torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.5)
    held.commit(targets, [second])
    assert held._factors[0] is factor and torch.equal(factor, second.float())
    layer(torch.randn(3, 6)).pow(2).sum().backward()
    opt.step()
    assert layer.weight[~second].eq(0).all() and layer.weight.grad[~second].eq(0).all()
    assert layer.weight[second].ne(0).all()


def test_zero_eps_is_not_zero_preserving() -> None:
    """``0 / (sqrt(0) + 0)`` is NaN: such an optimizer keeps its state, and the weights are zeroed after steps."""
    torch.manual_seed(0)
    ours = torch.nn.Linear(6, 3)
    ref = copy.deepcopy(ours)
    opts = [torch.optim.Adam(m.parameters(), lr=0.01, eps=0.0) for m in (ours, ref)]
    batches = [torch.randn(4, 6) for _ in range(6)]

    def step(model, opt, x) -> None:
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()

    for x in batches[:2]:
        step(ours, opts[0], x)
        step(ref, opts[1], x)
    mask = torch.rand(3, 6) > 0.5
    held = InPlaceMasks()
    held.commit(resolve_targets(ours, ["weight"]), [mask])
    held.attach([opts[0]])
    prune.custom_from_mask(ref, "weight", mask)
    assert held.per_step
    for x in batches[2:]:
        step(ours, opts[0], x)
        step(ref, opts[1], x)
        assert ours.weight.isfinite().all() and ours.weight[~mask].eq(0).all()
        torch.testing.assert_close(ours.weight, ref.weight_orig * ref.weight_mask, rtol=0, atol=0)


class PowerSGD(Callback):
    """Register PowerSGD on the DDP model (Lightning's `ddp_comm_hook` option registers only on CUDA), at fit
    start or, listed after the pruning callback, once its `on_train_start` has run."""

    def __init__(self, at_train_start: bool = False) -> None:
        self.at_train_start = at_train_start

    def on_fit_start(self, trainer, pl_module) -> None:
        if not self.at_train_start:
            self._register(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.at_train_start:
            self._register(trainer)

    def _register(self, trainer) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

        state = powerSGD_hook.PowerSGDState(
            process_group=None, matrix_approximation_rank=1, start_powerSGD_iter=2, min_compression_rate=0.5,
            use_error_feedback=False, warm_start=False,
        )  # fmt: skip
        trainer.strategy.model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
@pytest.mark.parametrize("at_train_start", [False, True], ids=["before-training", "after-on-train-start"])
def test_ddp_communication_hook_gets_the_per_step_pass(tmp_path, monkeypatch, at_train_start: bool) -> None:
    """PowerSGD's low-rank gradients are non-zero at pruned entries after backward has masked them, whether
    its hook is registered before training or after the callback's `on_train_start` (in the module's)."""
    from lightning.pytorch.strategies import DDPStrategy

    # PowerSGD calls `torch.cuda.synchronize(device)` whenever CUDA is available, which fails for
    # the CPU tensors of this fit on a machine with a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    callback = PruningCallback(schedule=Explicit({0: 0.5}), masking="in_place")
    check = ZerosAfterEveryStep(callback)
    torch.manual_seed(0)
    try:
        strategy = DDPStrategy(process_group_backend="gloo")
        hooks = [callback, PowerSGD(at_train_start), check] if at_train_start else [PowerSGD(), callback, check]
        make_lenet_trainer(tmp_path, hooks, strategy=strategy).fit(LitLeNet(), lenet_data())
    finally:
        if torch.distributed.is_initialized():  # a one-process group, left for the rest of the session otherwise
            torch.distributed.destroy_process_group()
    assert check.checked > 0


def test_steps_without_changes_do_no_pruning_work(tmp_path, monkeypatch) -> None:
    """Per step only identity and flag checks: no re-attach, no new hooks, no state zeroing."""
    calls = {"attach": 0, "refresh_hooks": 0, "_zero_state": 0, "sync": 0}
    for name in calls:
        original = getattr(InPlaceMasks, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(InPlaceMasks, name, counted)
    _fit(PruningCallback(schedule=Explicit({0: 0.5}), masking="in_place"), tmp_path, epochs=3)
    steps = 3 * 4
    assert calls["sync"] == 2 * steps  # before each backward and each optimizer step
    assert calls["attach"] == 1  # in on_train_start
    assert calls["refresh_hooks"] == 2 and calls["_zero_state"] == 1  # attach (no masks yet), the event


def test_weights_written_at_train_end_are_masked(tmp_path) -> None:
    """StochasticWeightAveraging copies its averages, taken partly before the events, into the
    weights at the end of training: the fit still ends with the masks, as with the reparametrization."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    results = {}
    for masking in ("reparametrize", "in_place"):
        callback = PruningCallback(schedule=Explicit({0: 0.3, 2: 0.6}), masking=masking)
        swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)
        model = _fit(callback, tmp_path / masking, epochs=4, extra=[swa])
        results[masking] = {n: model.get_parameter(n).detach().clone() for n in WEIGHTS}
    total = sum(w.numel() for w in results["in_place"].values())
    assert sum(int((w == 0).sum()) for w in results["in_place"].values()) == round(0.6 * total)
    for name in WEIGHTS:
        torch.testing.assert_close(results["in_place"][name], results["reparametrize"][name], rtol=0, atol=1e-6)


def test_weights_written_between_steps_are_masked_before_the_next_forward(tmp_path) -> None:
    """StochasticWeightAveraging copies its averages (of weights from before the events) into the weights
    at the start of its batch-norm epoch, which runs forwards only: batch norm's statistics are gathered,
    and the last checkpoint written, with the pruned entries at zero, as with the reparametrization."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    from tests.helpers import TinyNet, make_loader, make_model, make_trainer

    class WithNorm(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(self.fc1.out_features)

        def forward(self, x):
            return self.fc2(torch.relu(self.norm(self.fc1(x))))

    results = {}
    for masking in ("reparametrize", "in_place"):
        root = tmp_path / masking
        callbacks = [
            PruningCallback(schedule=0.5, masking=masking),
            StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1),
            ModelCheckpoint(dirpath=root, save_last=True),
        ]
        model = make_model(cls=WithNorm)
        make_trainer(root, callbacks=callbacks, max_epochs=3, enable_checkpointing=True).fit(model, make_loader())
        saved = torch.load(root / "last.ckpt", weights_only=True)["state_dict"]
        results[masking] = saved
        assert int((saved["fc1.weight"] == 0).sum()) == round(0.5 * model.fc1.weight.numel())
    for key in ("fc1.weight", "fc2.weight", "norm.running_mean", "norm.running_var"):
        torch.testing.assert_close(results["in_place"][key], results["reparametrize"][key], rtol=0, atol=1e-6)


class _WritesDenseWeights(Callback):
    """Copies the weights as they were before the fit into the model at the end of each training batch, or
    of each training epoch (after the pruning event)."""

    def __init__(self, hook: str) -> None:
        self.hook, self.dense = hook, {}

    def on_fit_start(self, trainer, pl_module) -> None:
        self.dense = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def _write(self, pl_module) -> None:
        for name, param in pl_module.named_parameters():
            param.detach().copy_(self.dense[name])

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if self.hook == "on_train_batch_end":
            self._write(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.hook == "on_train_epoch_end":
            self._write(pl_module)


@pytest.mark.parametrize("hook", ["on_train_batch_end", "on_train_epoch_end"])
@pytest.mark.parametrize("writer_first", [False, True], ids=["pruning-first", "writer-first"])
def test_weights_written_after_a_step_are_masked_for_validation_and_checkpoints(
    tmp_path, hook: str, writer_first: bool
) -> None:
    from tests.helpers import TinyNetEval, make_loader, make_model, make_trainer

    class Seen(TinyNetEval):
        def validation_step(self, batch, batch_idx):
            self.zeros.append(int((self.fc1.weight == 0).sum()))
            return super().validation_step(batch, batch_idx)

    model = make_model(cls=Seen)
    model.zeros = []
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    callbacks = [PruningCallback(schedule=Explicit({0: 0.6}), masking="in_place"), _WritesDenseWeights(hook)]
    callbacks = callbacks[::-1] if writer_first else callbacks
    trainer = make_trainer(
        tmp_path, callbacks=[*callbacks, checkpoints], max_epochs=3, enable_checkpointing=True, num_sanity_val_steps=0
    )
    trainer.fit(model, make_loader(), make_loader(batch_size=48))
    pruned = round(0.6 * model.fc1.weight.numel())
    if hook == "on_train_batch_end":  # validation after epoch 0's last batch, before its event, too
        assert model.zeros[1:] == [pruned, pruned]
    for epoch in (0, 1, 2):
        saved = Seen.load_from_checkpoint(tmp_path / "ckpt" / f"epoch={epoch}.ckpt")
        assert int((saved.fc1.weight == 0).sum()) == pruned


def test_exponential_averages_are_pruned_for_validation_and_checkpoints(tmp_path) -> None:
    """EMAWeightAveraging validates and checkpoints its averaged copy: each event zeroes its pruned entries,
    which then stay zero (averages of zeros), on a model pruned before this fit too."""
    EMAWeightAveraging = ema_weight_averaging()

    from tests.helpers import TinyNetEval, make_loader, make_model, make_trainer

    class Seen(TinyNetEval):
        def validation_step(self, batch, batch_idx):
            self.zeros.append(int((self.fc1.weight == 0).sum()))
            return super().validation_step(batch, batch_idx)

    model = make_model(cls=Seen)
    make_trainer(tmp_path, callbacks=[PruningCallback(schedule=0.3, masking="in_place")], max_epochs=1).fit(
        model, make_loader()
    )
    model.zeros = []
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    callbacks = [PruningCallback(schedule=Explicit({0: 0.6}), masking="in_place"), EMAWeightAveraging(), checkpoints]
    trainer = make_trainer(
        tmp_path, callbacks=callbacks, max_epochs=3, enable_checkpointing=True, num_sanity_val_steps=0
    )
    trainer.fit(model, make_loader(), make_loader(batch_size=48))
    pruned = round(0.6 * model.fc1.weight.numel())
    assert model.zeros[1:] == [pruned, pruned]  # epoch 0 validates before its event
    for epoch in (1, 2):
        saved = Seen.load_from_checkpoint(tmp_path / "ckpt" / f"epoch={epoch}.ckpt")
        assert int((saved.fc1.weight == 0).sum()) == pruned


def test_exponential_averages_of_a_model_reparametrized_before_are_pruned(tmp_path) -> None:
    """The averaged copy, made of a model that an earlier fit left reparametrized, holds `<name>_orig`."""
    EMAWeightAveraging = ema_weight_averaging()

    from tests.helpers import make_loader, make_model, make_trainer

    model = make_model()
    first = PruningCallback(schedule=0.3, make_permanent=False)
    make_trainer(tmp_path, callbacks=[first], max_epochs=1).fit(model, make_loader())
    callbacks = [PruningCallback(schedule=Explicit({0: 0.6}), masking="in_place"), EMAWeightAveraging()]
    make_trainer(tmp_path, callbacks=callbacks, max_epochs=2).fit(model, make_loader())
    assert int((model.fc1.weight == 0).sum()) >= round(0.6 * model.fc1.weight.numel())


def test_a_rewind_beside_exponential_averages_warns_that_they_are_not_rewound(tmp_path) -> None:
    EMAWeightAveraging = ema_weight_averaging()

    from tests.helpers import make_loader, make_model, make_trainer

    callbacks = [
        PruningCallback(schedule=Explicit({1: 0.5}), masking="in_place", rewind=Rewind(epoch=0)),
        EMAWeightAveraging(),
    ]
    with pytest.warns(UserWarning, match="rewinds the model, not the averages of EMAWeightAveraging"):
        make_trainer(tmp_path, callbacks=callbacks, max_epochs=2).fit(make_model(), make_loader())


def test_an_expanded_all_true_mask_is_stored_as_a_mask_of_its_own() -> None:
    layer = torch.nn.Linear(3, 2, bias=False)
    targets = resolve_targets(layer)
    masks = InPlaceMasks()
    masks.commit(targets, core.current_masks(targets))  # unpruned: one True expanded to (2, 3)
    assert masks.masks["weight"].is_contiguous() and bool(masks.masks["weight"].all())
    masks.commit(targets, [torch.tensor([[True, False, True], [False, True, True]])])
    assert masks.masks["weight"].tolist() == [[True, False, True], [False, True, True]]
    assert int((layer.weight == 0).sum()) == 2


class _DevicesAtFitEnd(Callback):
    """Where the weights and the in-place masks of ``pruning`` are once it has run its `on_fit_end`."""

    def __init__(self, pruning: PruningCallback) -> None:
        self.pruning = pruning
        self.seen: set[str] = set()

    def on_fit_end(self, trainer, pl_module) -> None:
        inplace, snapshot = self.pruning._inplace, self.pruning._snapshot
        assert snapshot is not None
        tensors = [*pl_module.parameters(), *snapshot.tensors.values()]
        if inplace is not None:
            tensors += [*inplace.masks.values(), *inplace._factors]
        self.seen = {t.device.type for t in tensors}


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_masks_follow_a_model_moved_before_fit_end(tmp_path, monkeypatch, masking: str) -> None:
    """Lightning moves the model off the accelerator before `on_fit_end` (a GPU fit ends on the CPU),
    where `in_place` zeroes the pruned weights once more: its masks must be where the weights are,
    and so must the rewind snapshot. A move to the meta device stands in for the GPU-to-CPU one on
    any machine."""
    callback = PruningCallback(schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=1), masking=masking)
    probe = _DevicesAtFitEnd(callback)
    trainer = make_lenet_trainer(tmp_path, [callback, probe], epochs=2)
    teardown = trainer.strategy.teardown

    def teardown_to_meta() -> None:
        teardown()
        trainer.lightning_module.to("meta")

    monkeypatch.setattr(trainer.strategy, "teardown", teardown_to_meta)
    torch.manual_seed(0)
    trainer.fit(LitLeNet(), lenet_data())
    assert probe.seen == {"meta"}


def test_masks_committed_one_target_at_a_time_all_hold() -> None:
    """A commit for some targets keeps enforcing the masks committed earlier for others."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    targets = resolve_targets(model)
    mask = torch.tensor([[True, False] * 2] * 4)
    held = InPlaceMasks()
    for target in targets:
        held.commit([target], [mask])
    opt = SubclassedSGD(model.parameters(), lr=0.5, momentum=0.9)  # zeroed after each step, too
    held.attach([opt])
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).sum().backward()
        for target in targets:
            assert target.parameter.grad[~mask].eq(0).all(), target.qualname
        opt.step()
    for target in targets:
        assert target.parameter[~mask].eq(0).all() and target.parameter[mask].ne(0).all(), target.qualname


class _Gan(LitLeNet):
    """Manual optimization: both losses from one forward, the convolutions stepped before the backward of
    the linear layers' loss, whose graph saved the linear weights (valid without pruning)."""

    def __init__(self, convs: type[torch.optim.Optimizer]) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.convs = convs

    def training_step(self, batch, batch_idx):
        x, y = batch
        conv_opt, linear_opt = self.optimizers()
        features = torch.flatten(F.max_pool2d(F.relu(self.conv2(F.max_pool2d(F.relu(self.conv1(x)), 2))), 2), 1)
        logits = self.fc3(F.relu(self.fc2(F.relu(self.fc1(features)))))
        head = self.fc3(F.relu(self.fc2(F.relu(self.fc1(features.detach())))))
        conv_opt.zero_grad()
        self.manual_backward(F.cross_entropy(logits, y), inputs=[p for n, p in self.named_parameters() if "conv" in n])
        conv_opt.step()
        linear_opt.zero_grad()
        self.manual_backward(F.cross_entropy(head, y))
        linear_opt.step()

    def configure_optimizers(self):
        convs = [p for n, p in self.named_parameters() if n.startswith("conv")]
        linears = [p for n, p in self.named_parameters() if n.startswith("fc")]
        return self.convs(convs, lr=0.05), torch.optim.Adam(linears, lr=0.01)


def test_the_per_step_pass_leaves_other_optimizers_weights_alone(tmp_path) -> None:
    """With an optimizer that needs the pass after its steps, the pass writes only the weights that optimizer
    steps: writing the others would break the backward of a graph that saved them."""
    _both_maskings(tmp_path, lambda: _Gan(SubclassedSGD), Explicit({0: 0.5}))


class _RebuiltInStep(LitLeNet):
    """Rebuilds its (not zero-preserving) optimizer inside the closure of the optimizer's own step."""

    def training_step(self, batch, batch_idx):
        if (self.current_epoch, batch_idx) == (1, 2):
            self.trainer.strategy.setup_optimizers(self.trainer)
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        return SubclassedSGD(self.parameters(), lr=0.05, momentum=0.9)


def test_an_optimizer_rebuilt_within_its_step_has_that_step_masked(tmp_path) -> None:
    _both_maskings(tmp_path, _RebuiltInStep, Explicit({0: 0.5}))


class _MasterSGD(torch.optim.Optimizer):
    """SGD on copies of the model's weights, written back after each step (as mixed precision's master weights),
    through ``.data`` if ``via_data`` (as apex does: the weights' version counters do not move)."""

    def __init__(self, params, lr: float, via_data: bool) -> None:
        self.model_params, self.via_data = list(params), via_data
        super().__init__([p.detach().clone().requires_grad_(True) for p in self.model_params], {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for master, p in zip(group["params"], self.model_params):
                if p.grad is not None:
                    master.add_(p.grad, alpha=-group["lr"])
                    (p.data if self.via_data else p).copy_(master)
        return loss


class _MasterWeights(LitLeNet):
    def __init__(self, via_data: bool) -> None:
        super().__init__()
        self.via_data = via_data

    def configure_optimizers(self):
        return _MasterSGD(self.parameters(), lr=0.05, via_data=self.via_data)


@pytest.mark.parametrize("via_data", [pytest.param(False, id="copy"), pytest.param(True, id="data-copy")])
def test_weights_written_by_an_optimizer_that_does_not_hold_them_are_masked(tmp_path, via_data: bool) -> None:
    """The per-step pass also covers masked weights the step wrote without holding them."""
    _both_maskings(tmp_path, lambda: _MasterWeights(via_data), Explicit({0: 0.5}))


def test_the_per_step_pass_refuses_a_pending_graph_of_a_weight_written_between_steps() -> None:
    """A weight written outside any step (its pruned entries nonzero) and saved by a graph: the pass after
    another optimizer's step zeroes it in place, so that graph's backward fails instead of using new values."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 1, bias=False))
    held = InPlaceMasks()
    held.commit(resolve_targets(model), [torch.tensor([[True, False, True]] * 3), torch.tensor([[True, False, True]])])
    first, second = SubclassedSGD(model[0].parameters(), lr=0.1), torch.optim.SGD(model[1].parameters(), lr=0.1)
    held.attach([first, second])
    with torch.no_grad():
        model[1].weight.add_(1.0)
    written = model[1](model[0](torch.randn(4, 3))).sum()  # saves model[1].weight with a pruned entry at 1
    first.zero_grad()
    model[0](torch.randn(2, 3)).sum().backward()
    first.step()
    assert model[1].weight[0, 1] == 0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        written.backward()


def _mlp_and_torch_copy() -> tuple[torch.nn.Sequential, torch.nn.Sequential, list[torch.Tensor]]:
    """A small MLP, a copy of it, and a mask per Linear weight."""
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    g = torch.Generator().manual_seed(1)
    return ours, copy.deepcopy(ours), [torch.rand(m.weight.shape, generator=g) > 0.5 for m in (ours[0], ours[2])]


def _loss(model: torch.nn.Module, i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + i)
    return F.cross_entropy(model(torch.randn(8, 6, generator=g)), torch.randint(0, 3, (8,), generator=g))


def _assert_same_as_torch(ours: torch.nn.Sequential, ref: torch.nn.Sequential) -> None:
    for m_ours, m_ref in zip((ours[0], ours[2]), (ref[0], ref[2])):
        assert torch.equal(m_ours.weight, m_ref.weight_orig * m_ref.weight_mask)
        assert torch.equal(m_ours.bias, m_ref.bias)


def test_post_accumulate_gradient_hooks_see_the_masked_gradient() -> None:
    """An optimizer stepped in backward by each parameter's post-accumulate gradient hook, registered before
    the masks (and so before the hook that masks the gradient): it steps on the masked gradient, as it does
    on torch's ``weight_orig``, also after a later commit hooks the gradient again. Pruned entries stay zero."""
    ours, ref, masks = _mlp_and_torch_copy()
    seen: list[torch.Tensor] = []
    handles: list = []

    def in_backward(model: torch.nn.Module) -> list[torch.optim.Optimizer]:
        opts = {p: torch.optim.SGD([p], lr=0.1, momentum=0.9) for p in model.parameters()}

        def hook(p: torch.Tensor) -> None:
            seen.append(p.grad.clone())
            opts[p].step()
            opts[p].zero_grad()

        handles.extend(p.register_post_accumulate_grad_hook(hook) for p in model.parameters())
        return list(opts.values())

    opts = in_backward(ours)
    in_backward(ref)
    held = InPlaceMasks()
    held.commit(resolve_targets(ours), masks)
    held.attach(opts)
    for module, mask in zip((ref[0], ref[2]), masks):
        prune.custom_from_mask(module, "weight", mask)
    more = [mask & (torch.rand(mask.shape, generator=torch.Generator().manual_seed(2)) > 0.3) for mask in masks]
    for i in range(6):
        if i == 3:  # hooks registered again by a commit still run first
            held.commit(resolve_targets(ours), more)
            for module, mask in zip((ref[0], ref[2]), more):
                prune.custom_from_mask(module, "weight", mask)
        seen.clear()
        _loss(ours, i).backward()
        assert len(seen) == 4  # every parameter's hook ran
        _loss(ref, i).backward()
        _assert_same_as_torch(ours, ref)
    assert all(m.weight[~mask].eq(0).all() for m, mask in zip((ours[0], ours[2]), more))
    counts = [len(m.weight._post_accumulate_grad_hooks) for m in (ours[0], ours[2])]
    for handle in handles:  # the handles still remove their hooks
        handle.remove()
    assert [len(m.weight._post_accumulate_grad_hooks) for m in (ours[0], ours[2])] == [n - 1 for n in counts]


@pytest.mark.parametrize(
    ("cls", "options"), [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), (torch.optim.Adam, {"lr": 0.01})]
)
def test_optimizer_state_loaded_after_attach_keeps_pruned_weights_at_zero(cls, options) -> None:
    """A state saved before pruning (a user's own rewind) and loaded into an attached optimizer: its momentum
    and moments at pruned entries are zeroed, so the weights go on as torch's ``weight_orig * weight_mask``."""
    ours, ref, masks = _mlp_and_torch_copy()
    opts = [cls(ours.parameters(), **options), cls(ref.parameters(), **options)]
    for i in range(3):
        for model, opt in zip((ours, ref), opts):
            opt.zero_grad()
            _loss(model, i).backward()
            opt.step()
    saved = [copy.deepcopy(opt.state_dict()) for opt in opts]
    held = InPlaceMasks()
    held.commit(resolve_targets(ours), masks)
    held.attach([opts[0]])
    for module, mask in zip((ref[0], ref[2]), masks):
        prune.custom_from_mask(module, "weight", mask)
    for opt, state in zip(opts, saved):
        opt.load_state_dict(state)
    for i in range(3, 6):
        for model, opt in zip((ours, ref), opts):
            opt.zero_grad()
            _loss(model, i).backward()
            opt.step()
        _assert_same_as_torch(ours, ref)
    held.detach()
    assert not held._load_handles and all(not opt._optimizer_load_state_dict_post_hooks for opt in opts)


def test_masks_committed_in_inference_mode_serve_training_after_it() -> None:
    """Masks committed inside ``torch.inference_mode()`` are no inference tensors: later commits and training
    steps use them."""
    ours, ref, masks = _mlp_and_torch_copy()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ours, ref)]
    held = InPlaceMasks()
    held.attach([opts[0]])
    with torch.inference_mode():
        held.commit(resolve_targets(ours), masks)
    assert not any(t.is_inference() for t in [*held.masks.values(), *held._factors])
    for module, mask in zip((ref[0], ref[2]), masks):
        prune.custom_from_mask(module, "weight", mask)
    for i in range(3):
        for model, opt in zip((ours, ref), opts):
            opt.zero_grad()
            _loss(model, i).backward()
            opt.step()
        _assert_same_as_torch(ours, ref)
    held.commit(resolve_targets(ours), [~torch.eye(5, 6, dtype=torch.bool), torch.ones(3, 5, dtype=torch.bool)])
    assert ours[0].weight.diagonal().eq(0).all()


@pytest.mark.parametrize("registered", ["before", "after"])
def test_a_gradient_written_by_a_post_accumulate_hook_is_masked_again(registered: str) -> None:
    """Gradient noise added by each parameter's post-accumulate hook, registered before the masks are attached,
    or after (as a module's ``on_train_start`` does in a resumed fit; ``sync`` before the backward takes it in):
    it sees the masked gradient, and the mask applies again after it, as to torch's ``weight_orig``."""
    ours, ref, masks = _mlp_and_torch_copy()

    def noise(g: torch.Generator):
        def hook(p: torch.Tensor) -> None:
            p.grad.add_(torch.randn(p.shape, generator=g))

        return hook

    handles: dict[int, list] = {id(ours): [], id(ref): []}

    def add_noise(model: torch.nn.Module, seed: int = 5) -> None:
        hook = noise(torch.Generator().manual_seed(seed))
        handles[id(model)] = [p.register_post_accumulate_grad_hook(hook) for p in model.parameters()]

    if registered == "before":
        add_noise(ours)
    add_noise(ref)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ours, ref)]
    held = InPlaceMasks()
    held.commit(resolve_targets(ours), masks)
    held.attach([opts[0]])
    if registered == "after":
        add_noise(ours)
    held.sync([opts[0]])
    assert not held.per_step
    for module, mask in zip((ref[0], ref[2]), masks):
        prune.custom_from_mask(module, "weight", mask)
    for i in range(4):
        if registered == "after" and i % 2:  # one hook swapped for another between steps: as many hooks as before
            for model in (ours, ref):
                for handle in handles[id(model)]:
                    handle.remove()
                add_noise(model, seed=i)
            held.sync([opts[0]])
        for model, opt in zip((ours, ref), opts):
            opt.zero_grad()
            _loss(model, i).backward()
            opt.step()
        _assert_same_as_torch(ours, ref)
