"""PruningCallback end to end on the tutorial's LeNet, with torch.nn.utils.prune as the reference."""

from __future__ import annotations

import copy
import csv
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.nn.utils import prune
from torch.utils.data import DataLoader

from lightning_prune import PruningCallback, Rewind
from lightning_prune.schedules import Explicit, Linear, Polynomial
from tests.helpers import TinyNet, effective_weights, make_loader, make_model, make_trainer
from tests.tutorial import LitLeNet, lenet_data

WEIGHTS = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]


class Recorder(Callback):
    """Records, at each epoch end, the weights before pruning (place it first) or the masks after (place it last)."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.masks: list[dict[str, torch.Tensor]] = []
        self.keys: list[list[str]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        named = dict(pl_module.named_parameters())
        self.weights.append({n: named.get(n, named.get(n + "_orig")).detach().clone() for n in WEIGHTS})
        buffers = dict(pl_module.named_buffers())
        self.masks.append({n: buffers[n + "_mask"].clone() for n in WEIGHTS if n + "_mask" in buffers})
        self.keys.append(list(pl_module.state_dict()))


def _fit(
    callback: PruningCallback, tmp_path, *, epochs: int = 3, model: LitLeNet | None = None, extra=(), logger=False
):
    torch.manual_seed(0)
    model = model or LitLeNet()
    before, after = Recorder(), Recorder()
    trainer = Trainer(
        accelerator="cpu",  # compared with CPU references
        max_epochs=epochs,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[before, callback, after, *extra],
    )
    trainer.fit(model, lenet_data())
    return model, before, after


def test_global_l1_masks_equal_torch_at_every_event(tmp_path) -> None:
    schedule = Explicit({0: 0.3, 1: 0.6, 2: 0.8})
    callback = PruningCallback(method="l1_unstructured", scope="global", schedule=schedule, make_permanent=False)
    _, before, after = _fit(callback, tmp_path)
    reference = LitLeNet()
    pruned = 0
    total = sum(w.numel() for w in before.weights[0].values())
    for epoch, sparsity in schedule.sparsities.items():
        with torch.no_grad():
            for name in WEIGHTS:
                reference.get_parameter(name if epoch == 0 else name + "_orig").copy_(before.weights[epoch][name])
            reference(torch.zeros(1, 1, 32, 32))  # torch reads the hook-recomputed `weight`
        params = [(reference.get_submodule(n.split(".")[0]), "weight") for n in WEIGHTS]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=round(sparsity * total) - pruned)
        pruned = round(sparsity * total)
        for name in WEIGHTS:
            expected = reference.get_buffer(name + "_mask").bool()
            assert torch.equal(after.masks[epoch][name], expected), (epoch, name)
            assert after.masks[epoch][name].dtype == torch.bool
    assert sum(int((~m).sum()) for m in after.masks[-1].values()) == round(0.8 * total)


def test_layout_during_training_and_plain_after_fit(tmp_path) -> None:
    callback = PruningCallback(schedule=Linear(0.5, start_epoch=0, end_epoch=1), make_permanent=True)
    model, _, after = _fit(callback, tmp_path, epochs=2)
    for name in WEIGHTS:
        assert name + "_orig" in after.keys[1] and name + "_mask" in after.keys[1] and name not in after.keys[1]
    assert sorted(model.state_dict()) == sorted(dict(LitLeNet().named_parameters()))
    assert not prune.is_pruned(model)
    assert not [n for n, _ in model.named_buffers()]
    for name in WEIGHTS:
        weight = model.get_parameter(name)
        assert torch.equal(weight == 0, ~after.masks[-1][name])


def test_zeros_visible_right_after_event(tmp_path) -> None:
    seen = {}

    class Look(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            seen["zeros"] = int((pl_module.fc1.weight == 0).sum())

    _fit(PruningCallback(schedule=0.5, make_permanent=False), tmp_path, epochs=1, extra=[Look()])
    assert seen["zeros"] == round(0.5 * 48000)


def test_masks_never_regrow_and_counts_are_exact(tmp_path) -> None:
    schedule = Polynomial(final_sparsity=0.9, start_epoch=0, end_epoch=3)
    callback = PruningCallback(method="random_unstructured", schedule=schedule, seed=3, make_permanent=False)
    _, _, after = _fit(callback, tmp_path, epochs=4)
    for epoch in range(1, 4):
        for name in WEIGHTS:
            previous, current = after.masks[epoch - 1].get(name), after.masks[epoch][name]
            if previous is not None:
                assert not (current & ~previous).any(), "a pruned entry came back"
            assert int((~current).sum()) == round(schedule.sparsity_at(epoch) * current.numel())


def test_structured_channels(tmp_path) -> None:
    callback = PruningCallback(method="ln_structured", dim=0, norm=1, schedule=0.5, targets=["conv*.weight"])
    model, _, after = _fit(callback, tmp_path, epochs=1)
    for name, channels in (("conv1.weight", 6), ("conv2.weight", 16)):
        alive = after.masks[0][name].flatten(1).any(1)
        assert int((~alive).sum()) == channels // 2
        assert after.masks[0][name][alive].all(), "kept channels are whole"
        assert model.get_parameter(name)[~alive].eq(0).all()


class _BuiltLate(LitLeNet):
    """The tutorial's LeNet whose classifier is built in ``setup`` or ``configure_model``, after the
    callbacks' ``setup`` (Lightning's order)."""

    def __init__(self, hook: str) -> None:
        super().__init__()
        self.hook = hook
        del self.fc3

    def _build(self) -> None:
        if not hasattr(self, "fc3"):
            self.fc3 = torch.nn.Linear(84, 10)

    def setup(self, stage: str) -> None:
        if self.hook == "setup":
            self._build()

    def configure_model(self) -> None:
        if self.hook == "configure_model":
            self._build()


@pytest.mark.parametrize("hook", ["setup", "configure_model"])
def test_layers_built_in_setup_or_configure_model_are_pruned(tmp_path, hook: str) -> None:
    callback = PruningCallback(schedule=0.5, make_permanent=False)
    torch.manual_seed(0)
    _, _, after = _fit(callback, tmp_path, epochs=1, model=_BuiltLate(hook))
    assert [t.qualname for t in callback.targets] == WEIGHTS
    assert int((~after.masks[0]["fc3.weight"]).sum()) == 420


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
@pytest.mark.parametrize("method", ["l1_unstructured", "ln_structured"])
def test_model_pruned_by_torch_beforehand(tmp_path, method: str, masking: str) -> None:
    """torch's float masks are read as bool masks and kept: the first event prunes on top of them."""
    torch.manual_seed(0)
    model = LitLeNet()
    prune.l1_unstructured(model.fc1, "weight", amount=0.3)
    torch_mask = model.fc1.weight_mask.bool()
    callback = PruningCallback(
        method=method, schedule=0.5, targets=["fc*.weight"], make_permanent=False, masking=masking
    )
    model, _, after = _fit(callback, tmp_path, epochs=1, model=model)
    mask = callback._current_masks()[0]
    assert mask.dtype == torch.bool and not (mask & ~torch_mask).any(), "torch's zeros stay"
    if method == "l1_unstructured":
        assert int((~mask).sum()) == round(0.5 * mask.numel())
    else:
        assert int((~mask.any(1)).sum()) == round(0.5 * mask.shape[0])
    if masking == "reparametrize":
        assert torch.equal(after.masks[0]["fc1.weight"], mask)
        assert [type(h).__name__ for h in model.fc1._forward_pre_hooks.values()] == ["MaskHook"]
    weight = model.fc1.weight if masking == "reparametrize" else callback.targets[0].parameter  # in place: `_orig`
    assert weight[~mask].eq(0).all()


def test_tutorial_foobar_through_callback(tmp_path) -> None:
    class FooBarPruningMethod(prune.BasePruningMethod):
        PRUNING_TYPE = "unstructured"

        def compute_mask(self, t, default_mask):
            mask = default_mask.clone()
            mask.view(-1)[::2] = 0
            return mask

    callback = PruningCallback(method=FooBarPruningMethod, targets=["fc3.bias"], schedule=0.5, make_permanent=False)
    model, _, _ = _fit(callback, tmp_path, epochs=1)
    assert model.fc3.bias_mask.tolist() == [False, True] * 5


def test_deepcopy_and_second_fit_while_pruned(tmp_path) -> None:
    callback = PruningCallback(scope="global", schedule=Explicit({0: 0.5, 2: 0.7}), make_permanent=False)
    model, _, after = _fit(callback, tmp_path, epochs=2)
    clone = copy.deepcopy(model)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(clone(x), model(x))
    first = {n: m.clone() for n, m in after.masks[-1].items()}
    model, _, after = _fit(callback, tmp_path, epochs=3, model=model)
    total = sum(m.numel() for m in first.values())
    assert sum(int((~m).sum()) for m in after.masks[-1].values()) == round(0.7 * total)
    for name, mask in first.items():
        assert not (after.masks[-1][name] & ~mask).any(), "the second fit keeps the first fit's masks"


def test_second_fit_after_make_permanent_keeps_zeros(tmp_path) -> None:
    callback = PruningCallback(schedule=0.5)
    model, _, _ = _fit(callback, tmp_path, epochs=1)
    zeros = {n: model.get_parameter(n) == 0 for n in WEIGHTS}
    model, _, _ = _fit(callback, tmp_path, epochs=2, model=model)
    for name in WEIGHTS:
        assert (model.get_parameter(name)[zeros[name]] == 0).all()


def test_logs_schedule_values_to_every_logger(tmp_path) -> None:
    schedule = Explicit({0: 0.25, 1: 0.5})
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    callback = PruningCallback(scope="global", schedule=schedule)
    _fit(callback, tmp_path, epochs=2, logger=loggers)
    loggers[0].save()
    with open(loggers[0].log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("sparsity/global")]
    assert [float(r["sparsity/global"]) for r in rows] == pytest.approx([0.25, 0.5], abs=1e-4)
    assert [int(r["step"]) for r in rows] == [4, 8]
    assert all(r["sparsity/fc1.weight"] for r in rows)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(loggers[1].log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"sparsity/global", *(f"sparsity/{n}" for n in WEIGHTS)} <= set(tags["scalars"])
    assert [round(e.value, 4) for e in events.Scalars("sparsity/global")] == [0.25, 0.5]
    assert "weights/fc1.weight" in tags["histograms"]
    assert "sparsity/per_layer" in tags["images"]


def test_histograms_and_bar_chart_take_the_loggers_prefix_as_its_scalars_do(tmp_path) -> None:
    """Runs that share a log directory, told apart by `TensorBoardLogger(prefix=...)`, keep apart every tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb", prefix="runA")
    _fit(PruningCallback(schedule=Explicit({0: 0.5})), tmp_path, epochs=1, logger=[logger])
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert "runA-sparsity/global" in tags["scalars"]
    assert set(tags["histograms"]) == {f"runA-weights/{n}" for n in WEIGHTS}
    assert tags["images"] == ["runA-sparsity/per_layer"]


@pytest.mark.parametrize(
    ("second_method", "names"),
    [("l1_unstructured", ["l1_unstructured_1", "l1_unstructured_2"]), ("random_unstructured", None)],
    ids=["same-method", "other-method"],
)
def test_several_callbacks_log_under_their_own_names(tmp_path, second_method: str, names) -> None:
    """Each callback's `sparsity/global`, per-layer scalars, histograms and bar chart, under its method's name
    (numbered when two share a method): one tag each, with that callback's own sparsity."""
    names = names or ["l1_unstructured", "random_unstructured"]
    convs = PruningCallback(scope="global", schedule=Explicit({0: 0.3}), targets=["conv*.weight"])
    fcs = PruningCallback(method=second_method, schedule=Explicit({0: 0.5}), targets=["fc*.weight"], seed=0)
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    _fit(convs, tmp_path, epochs=1, logger=loggers, extra=[fcs])
    loggers[0].save()
    with open(loggers[0].log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if any(r.get(f"sparsity/{n}/global") for n in names)]
    values = {n: [float(r[f"sparsity/{n}/global"]) for r in rows if r.get(f"sparsity/{n}/global")] for n in names}
    assert values == {names[0]: [pytest.approx(0.3, abs=1e-3)], names[1]: [pytest.approx(0.5, abs=1e-3)]}
    assert all("sparsity/global" not in r or not r["sparsity/global"] for r in rows), "no shared tag"
    assert any(r.get(f"sparsity/{names[0]}/conv1.weight") for r in rows)
    assert any(r.get(f"sparsity/{names[1]}/fc3.weight") for r in rows)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(loggers[1].log_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for name in names:
        assert len(events.Scalars(f"sparsity/{name}/global")) == 1
        assert f"sparsity/{name}/per_layer" in tags["images"]
    assert "sparsity/global" not in tags["scalars"] and "sparsity/per_layer" not in tags["images"]
    assert {f"weights/{names[0]}/conv1.weight", f"weights/{names[1]}/fc1.weight"} <= set(tags["histograms"])


def test_console_table(tmp_path, caplog) -> None:
    with caplog.at_level("INFO", logger="lightning.pytorch.callbacks.pruning"):
        _fit(PruningCallback(schedule=0.5), tmp_path, epochs=1)
    assert "pruning event after epoch 0: target 50.00%, reached 50.00%" in caplog.text
    assert "fc1.weight" in caplog.text and "24000/48000" in caplog.text


def test_no_work_without_event(tmp_path, monkeypatch) -> None:
    from lightning_prune import core

    calls = []
    monkeypatch.setattr(core, "compute_masks", lambda *a, **k: calls.append(1))
    _fit(PruningCallback(schedule=Explicit({5: 0.5})), tmp_path, epochs=2)
    assert calls == []


class _Dropout(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.dropout(torch.relu(self.fc1(x)), 0.3, self.training))


def _fit_drawing(tmp_path, callbacks: list[Callback]) -> dict[str, torch.Tensor]:
    """Two epochs of a model with dropout on shuffled batches: both draw from torch's global RNG."""
    seed_everything(0, verbose=False)
    model = make_model(cls=_Dropout)
    loader = make_loader()
    shuffled = DataLoader(loader.dataset, batch_size=16, shuffle=True)
    make_trainer(tmp_path, callbacks=callbacks, max_epochs=2).fit(model, shuffled)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_a_drawn_seed_leaves_training_as_without_the_callback(tmp_path) -> None:
    """`seed=None` takes a seed from the global RNG without advancing it: until the first event, the
    dropout masks and the batch order are those of a fit without the callback."""
    without = _fit_drawing(tmp_path, [])
    callbacks = [PruningCallback(schedule=Explicit({5: 0.5}), targets=[name]) for name in ("fc1.weight", "fc2.weight")]
    with_callbacks = _fit_drawing(tmp_path, callbacks)
    for name, value in without.items():
        assert torch.equal(with_callbacks[name], value), name
    seeds = [c.seed for c in callbacks]
    assert None not in seeds and seeds[0] != seeds[1], "each callback draws its own seed"
    again = [PruningCallback(schedule=Explicit({5: 0.5}), targets=[name]) for name in ("fc1.weight", "fc2.weight")]
    _fit_drawing(tmp_path, again)
    assert [c.seed for c in again] == seeds, "and the same ones from the same global state"


def test_a_callback_fit_by_a_new_trainer_draws_a_new_seed(tmp_path) -> None:
    """A seed sweep that reuses one callback object gets each run's own random masks; one Trainer keeps its seed."""
    callback = PruningCallback(method="random_unstructured", schedule=Explicit({0: 0.5}))
    seeds, masks = [], []
    for run in (1, 2):
        model = make_model()  # seeds the global RNG with 0
        seed_everything(run)
        make_trainer(tmp_path, callbacks=[callback], max_epochs=1).fit(model, make_loader())
        seeds.append(callback.seed)
        masks.append(model.fc1.weight != 0)
        fresh = PruningCallback(method="random_unstructured", schedule=Explicit({0: 0.5}))
        model = make_model()
        seed_everything(run)
        make_trainer(tmp_path, callbacks=[fresh], max_epochs=1).fit(model, make_loader())
        assert fresh.seed == callback.seed, "as a fresh callback would draw"
    assert seeds[0] != seeds[1] and not torch.equal(masks[0], masks[1])
    trainer = make_trainer(tmp_path, callbacks=[callback], max_epochs=1)
    trainer.fit(make_model(), make_loader())
    drawn = callback.seed
    trainer.fit_loop.max_epochs = 2
    trainer.fit(make_model(), make_loader())
    assert callback.seed == drawn
    given = PruningCallback(method="random_unstructured", seed=7)
    make_trainer(tmp_path, callbacks=[given], max_epochs=1).fit(make_model(), make_loader())
    assert given.seed == 7


def test_a_checkpoint_without_a_seed_keeps_the_callbacks() -> None:
    """A callback that never fit (the main process of a `ddp_spawn` fit) saves `seed: None`."""
    never_fit = PruningCallback(method="random_unstructured").state_dict()
    assert never_fit["seed"] is None
    callback = PruningCallback(method="random_unstructured", seed=123)
    callback.load_state_dict(never_fit)
    assert callback.seed == 123
    callback.load_state_dict({**never_fit, "seed": 5})
    assert callback.seed == 5


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_a_compiled_module_trains_pruned(tmp_path, masking: str) -> None:
    """`trainer.fit(torch.compile(model, fullgraph=True))`: no graph break, the schedule's sparsity, zeros seen."""
    torch._dynamo.reset()
    model = make_model()
    callback = PruningCallback(schedule=Explicit({0: 0.5, 1: 0.75}), masking=masking)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    make_trainer(tmp_path, callbacks=[callback], max_epochs=3).fit(compiled, make_loader())
    for name in ("fc1", "fc2"):
        weight = getattr(model, name).weight
        assert int((weight == 0).sum()) == round(0.75 * weight.numel()), name


class _ReadsFc1Directly(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(F.linear(x, self.fc1.weight, self.fc1.bias)))


def _not_recomputed_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "were not recomputed" in str(w.message)]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_weight_read_without_calling_its_module_is_named(tmp_path, compiled: bool) -> None:
    """Reparametrized, `fc1.weight` read by `F.linear` is the tensor the event computed: `weight_orig` gets
    no gradient, silently. The batch after the event says so; a model that calls its modules hears nothing."""
    torch._dynamo.reset()
    for cls, expected in ((_ReadsFc1Directly, ["fc1.weight"]), (TinyNet, [])):
        model = make_model(cls=cls)
        fitted = torch.compile(model, backend="aot_eager") if compiled else model
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_trainer(tmp_path, callbacks=[PruningCallback(schedule=Explicit({0: 0.5}))], max_epochs=2).fit(
                fitted, make_loader()
            )
        messages = _not_recomputed_warnings(caught)
        assert len(messages) == (1 if expected else 0), cls.__name__
        assert all(f"targets {expected}" in m for m in messages)
    # in place, the weight is the parameter: nothing to say
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback = PruningCallback(schedule=Explicit({0: 0.5}), masking="in_place")
        make_trainer(tmp_path, callbacks=[callback], max_epochs=2).fit(make_model(cls=_ReadsFc1Directly), make_loader())
    assert not _not_recomputed_warnings(caught)


def test_a_weight_read_directly_is_named_even_when_another_callback_rewinds(tmp_path) -> None:
    """The rewind writes every masked weight anew; the check still tells a hook's recomputation from it."""
    callbacks = [
        PruningCallback(targets=["fc2.weight"], schedule=Explicit({0: 0.5}), rewind=Rewind(epoch=0)),
        PruningCallback(targets=["fc1.weight"], schedule=Explicit({0: 0.5})),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, callbacks=callbacks, max_epochs=2).fit(make_model(cls=_ReadsFc1Directly), make_loader())
    messages = _not_recomputed_warnings(caught)
    assert len(messages) == 1 and "targets ['fc1.weight']" in messages[0]


def test_the_seed_is_drawn_on_the_cpu_whatever_the_default_device() -> None:
    """Under `torch.set_default_device(...)` the draw stays with the CPU generator, the one it leaves as it was."""
    callback = PruningCallback()
    trainer = types.SimpleNamespace(callbacks=[callback])
    state = torch.get_rng_state()
    with torch.device("meta"):  # a default device that holds no values
        seed = callback._draw_seed(trainer)  # type: ignore[arg-type]
    assert isinstance(seed, int) and torch.equal(torch.get_rng_state(), state)
    assert seed == callback._draw_seed(trainer)  # type: ignore[arg-type]


class _Encoder(TinyNet):
    """A transformer encoder layer: its attention reads ``out_proj.weight`` without calling ``out_proj``,
    and in evaluation its fast path reads every layer's weight without calling the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.fc1 = torch.nn.Linear(7, 8)
        self.fc2 = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.encoder(self.fc1(x).view(-1, 1, 8).expand(-1, 3, 8)).mean(1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _AfterFirstEvent(Callback):
    """The attention's output projection as the event after epoch 0 left it (place it after the pruning)."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            self.weight = effective_weights(pl_module)["encoder.self_attn.out_proj.weight"]


def test_attention_output_projection_trains_while_pruned(tmp_path) -> None:
    """The default targets include attention's ``out_proj``: it keeps training with its mask, evaluation
    uses the current weights, and the maskings agree."""
    models = {}
    for masking in ("reparametrize", "in_place"):
        model, after = make_model(cls=_Encoder), _AfterFirstEvent()
        callback = PruningCallback(schedule=Explicit({0: 0.5}), masking=masking, make_permanent=False)
        make_trainer(tmp_path, callbacks=[callback, after], max_epochs=3).fit(model, make_loader())
        models[masking] = model
        final = effective_weights(model)["encoder.self_attn.out_proj.weight"]
        assert int((final == 0).sum()) == 32
        assert (final != after.weight)[final != 0].all(), f"{masking}: every kept entry trained after the event"
    reparametrized, in_place = models["reparametrize"], models["in_place"]
    torch.testing.assert_close(effective_weights(in_place), effective_weights(reparametrized), rtol=0, atol=1e-6)
    x = torch.randn(4, 7)
    with torch.no_grad():  # the encoder layer's fast path
        torch.testing.assert_close(reparametrized.eval()(x), in_place.eval()(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("remove", ["make_permanent", "prune.remove", "prune.remove on a copy"])
def test_attention_hooks_go_with_the_reparametrization(tmp_path, remove: str) -> None:
    model = make_model(cls=_Encoder)
    callback = PruningCallback(schedule=Explicit({0: 0.5}), make_permanent=remove == "make_permanent")
    make_trainer(tmp_path, callbacks=[callback], max_epochs=1).fit(model, make_loader())
    if remove != "make_permanent":
        assert model.encoder.self_attn._forward_pre_hooks, "the attention module recomputes out_proj.weight"
        model = copy.deepcopy(model) if remove.endswith("copy") else model
        for module in model.modules():
            if prune.is_pruned(module) and hasattr(module, "weight_orig"):
                prune.remove(module, "weight")
    assert not prune.is_pruned(model)
    assert all(not m._forward_pre_hooks for m in model.modules())
    torch.jit.script(model.encoder.self_attn)  # which refuses a module with hooks


class _TiedAlias(TinyNet):
    """``alias.weight`` is ``fc1.weight``: one tensor under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.alias = torch.nn.Linear(7, 13)
        self.alias.weight = self.fc1.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x) + self.alias(x)))


class _WeightsShowTheMasks(Callback):
    """Listed last: at every training epoch end, each callback's targets read zero where the combined masks prune."""

    def __init__(self, callbacks: list[PruningCallback]) -> None:
        self.callbacks, self.checked = callbacks, 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        for callback in self.callbacks:
            for target, mask in zip(callback.targets, callback._current_masks()):
                module, name = target.holders[0]
                assert getattr(module, name)[~mask].eq(0).all(), target.qualname
                self.checked += 1


@pytest.mark.parametrize(("first", "second"), [("in_place", "reparametrize"), ("reparametrize", "in_place")])
def test_a_target_shared_with_a_reparametrization_shows_every_event_at_once(tmp_path, first, second) -> None:
    """An in_place callback zeroes ``weight_orig`` of a tensor that another callback reparametrizes: the masked
    ``weight`` shows those zeros right after the event, before any forward, as DESIGN promises."""
    callbacks = [
        PruningCallback(targets=["fc1.weight"], schedule=Explicit({0: 0.25}), masking=first),
        PruningCallback(
            method="random_unstructured", targets=["fc1.weight"], schedule=Explicit({1: 0.5}), masking=second
        ),
    ]
    check = _WeightsShowTheMasks(callbacks)
    model = make_model()
    make_trainer(tmp_path, callbacks=[*callbacks, check], max_epochs=3).fit(model, make_loader())
    assert check.checked == 6
    assert int((model.fc1.weight == 0).sum()) == round(0.5 * model.fc1.weight.numel())


@pytest.mark.parametrize("name", ["fc1.weight", "alias.weight"])
@pytest.mark.parametrize(
    ("first", "second"),
    [("in_place", "in_place"), ("in_place", "reparametrize"), ("reparametrize", "in_place")],
)
def test_overlapping_callbacks_count_each_others_pruning_in_either_masking(tmp_path, first, second, name) -> None:
    """Rows that a second callback pruned (under either name of the tensor) count for the first one's target,
    whatever either masks with: its event after epoch 2 finds the target met, changes nothing and does not
    rewind, as with two reparametrizations sharing one mask."""

    def fit(first: str, second: str) -> tuple[PruningCallback, TinyNet]:
        model = make_model(cls=_TiedAlias)
        ticket = PruningCallback(
            targets=["fc1.weight"], schedule=Explicit({0: 0.5, 2: 0.55}), rewind=Rewind(epoch=0), masking=first
        )
        rows = PruningCallback(method="ln_structured", targets=[name], schedule=Explicit({1: 0.3}), masking=second)
        make_trainer(tmp_path / f"{first}-{second}", callbacks=[ticket, rows], max_epochs=3).fit(model, make_loader())
        return ticket, model

    reference, expected = fit("reparametrize", "reparametrize")
    assert reference._round == 1 and float((expected.fc1.weight == 0).float().mean()) >= 0.55
    ticket, model = fit(first, second)
    assert ticket._round == 1
    assert torch.equal(model.fc1.weight, expected.fc1.weight)
