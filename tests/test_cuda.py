"""The callback on a GPU, with ``torch.nn.utils.prune`` on CPU copies as the reference (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.nn.utils import prune

from lightning_prune import PruningCallback, Rewind
from lightning_prune import masks as M
from lightning_prune.schedules import Explicit
from tests.helpers import make_lenet_trainer
from tests.test_inplace import check_zero_preserving
from tests.test_masks import _reference
from tests.tutorial import LitLeNet, TutorialLeNet, lenet_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

WEIGHTS = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
SCHEDULE = Explicit({0: 0.3, 1: 0.6, 2: 0.8})


class Spy(Callback):
    """At each epoch end: the trained weights before the event (place first), the masks after (place last)."""

    def __init__(self, callback: PruningCallback, before: bool) -> None:
        self.callback, self.before, self.seen = callback, before, []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.before:
            # `<name>_orig` once reparametrized: `module.weight` is the product from the last forward pass,
            # one optimizer step old
            self.seen.append({n: pl_module.get_parameter(_orig(pl_module, n)).detach().cpu().clone() for n in WEIGHTS})
        else:
            self.seen.append(self.callback._held_masks() or {})


def _orig(module: torch.nn.Module, name: str) -> str:
    return name + "_orig" if name + "_orig" in dict(module.named_parameters()) else name


def _tensors_in(value: object, seen: set[int] | None = None) -> list[torch.Tensor]:
    """Every tensor reachable from ``value`` through containers and object attributes."""
    seen = set() if seen is None else seen
    if id(value) in seen or isinstance(value, (str, bytes, int, float, type)) or value is None:
        return []
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, (list, tuple, set)):
        items = list(value)
    elif hasattr(value, "__dict__") and type(value).__module__.startswith("lightning_prune"):
        items = list(vars(value).values())
    else:
        return []
    return [t for item in items for t in _tensors_in(item, seen)]


@pytest.mark.parametrize("layout", ["sorted", "concatenated", "per-tensor"])
def test_prune_smallest_on_gpu_equals_cpu(monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    monkeypatch.setattr(M, "_CHUNK", 16)
    monkeypatch.setattr(M, "_ACCELERATOR_CHUNK", 64)  # several chunks per tensor, ties across their borders
    if layout != "sorted":  # the default for small selections off the CPU
        monkeypatch.setattr(M, "_sort_limit", lambda device: 0)
    if layout == "per-tensor":
        monkeypatch.setattr(M, "_SMALL", 0)
    g = torch.Generator().manual_seed(0)
    scores = [torch.randint(-4, 5, shape, generator=g).float() for shape in [(13, 17), (300,), (5, 7, 3)]]
    alive = [torch.rand(s.shape, generator=g) > 0.2 for s in scores]
    total = sum(s.numel() for s in scores)
    for n_pruned in (total // 3, total // 2, total - 7):
        expected = _reference(scores, alive, n_pruned, largest=False)  # a stable sort on the CPU
        got = M.prune_smallest([s.cuda() for s in scores], [a.cuda() for a in alive], n_pruned)
        for g_, e in zip(got, expected):
            assert g_.device.type == "cuda" and torch.equal(g_.cpu(), e), n_pruned


def test_radix_passes_on_gpu_equal_cpu_with_real_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real-valued scores of every magnitude over 4,096-entry chunks, a first event and two later ones."""
    monkeypatch.setattr(M, "_ACCELERATOR_CHUNK", 4096)
    monkeypatch.setattr(M, "_SMALL", 0)
    monkeypatch.setattr(M, "_sort_limit", lambda device: 0)
    g = torch.Generator().manual_seed(2)
    scores = [torch.randn(300, 200, generator=g) * 10.0 ** torch.randint(-20, 20, (300, 200), generator=g)]
    scores += [torch.randn(50_000, generator=g).half()]
    scores[1][::11] = 0.25  # ties
    alive = [torch.ones(s.shape, dtype=torch.bool) for s in scores]
    for fraction in (0.3, 0.5, 0.9):
        n_pruned = round(fraction * 110_000)
        expected = _reference(scores, alive, n_pruned, largest=False)
        got = M.prune_smallest([s.cuda() for s in scores], [a.cuda() for a in alive], n_pruned)
        assert all(torch.equal(g_.cpu(), e) for g_, e in zip(got, expected)), fraction
        alive = expected


def _trainer(root, callbacks: list[Callback], epochs: int, accelerator: str = "cuda") -> Trainer:
    return make_lenet_trainer(root, callbacks, epochs=epochs, accelerator=accelerator)


def _fit(callback: PruningCallback, tmp_path, *, accelerator="cuda", epochs=3, extra=(), ckpt_path=None):
    torch.manual_seed(0)
    model = LitLeNet()
    before, after = Spy(callback, before=True), Spy(callback, before=False)
    trainer = _trainer(tmp_path, [before, callback, after, *extra], epochs, accelerator)
    trainer.fit(model, lenet_data(), ckpt_path=ckpt_path)
    return model, before.seen, after.seen


def _torch_masks(weights: dict[str, torch.Tensor], method: str, amount: int | float) -> dict[str, torch.Tensor]:
    """torch's masks for one event on CPU copies of ``weights`` (unpruned tensors)."""
    reference = TutorialLeNet()
    with torch.no_grad():
        for name in WEIGHTS:
            reference.get_parameter(name).copy_(weights[name])
    params = [(reference.get_submodule(n.split(".")[0]), "weight") for n in WEIGHTS]
    if method == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for module, name in params:
            prune.ln_structured(module, name, amount=amount, n=1, dim=0)
    return {n: reference.get_buffer(n + "_mask").bool() for n in WEIGHTS}


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_global_l1_on_gpu_equals_torch_on_cpu(tmp_path, masking: str) -> None:
    callback = PruningCallback(scope="global", schedule=SCHEDULE, masking=masking, make_permanent=True)
    model, before, after = _fit(callback, tmp_path)
    total = sum(w.numel() for w in before[0].values())
    masks: dict[str, torch.Tensor] = {n: torch.ones_like(w, dtype=torch.bool) for n, w in before[0].items()}
    for epoch, sparsity in SCHEDULE.sparsities.items():
        # a fresh torch reference sees the pruned entries as zeros, the smallest magnitudes, so it
        # prunes them first and then the smallest survivors up to the cumulative count
        effective = {n: w * masks[n] for n, w in before[epoch].items()}
        expected = _torch_masks(effective, "global", round(sparsity * total))
        for name in WEIGHTS:
            got = after[epoch][name]
            assert got.device.type == "cuda" and got.dtype == torch.bool, name
            assert torch.equal(got.cpu(), expected[name] & masks[name]), (epoch, name)
        masks = {n: m.cpu() for n, m in after[epoch].items()}
    for name in WEIGHTS:
        assert torch.equal((model.get_parameter(name) != 0).cpu(), masks[name]), name
    assert not prune.is_pruned(model) and not list(model.buffers())


def test_layer_ln_structured_on_gpu_equals_torch_on_cpu(tmp_path) -> None:
    callback = PruningCallback(method="ln_structured", norm=1, dim=0, schedule=0.5, make_permanent=False)
    _, before, after = _fit(callback, tmp_path, epochs=1)
    expected = _torch_masks(before[0], "layer", 0.5)
    for name in WEIGHTS:
        assert after[0][name].device.type == "cuda"
        assert torch.equal(after[0][name].cpu(), expected[name]), name


def test_gpu_checkpoint_resumes_on_cpu(tmp_path) -> None:
    schedule = Explicit({0: 0.4, 1: 0.7})
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
    callback = PruningCallback(scope="global", schedule=schedule, make_permanent=False)
    _, _, after = _fit(callback, tmp_path / "gpu", epochs=2, extra=[checkpoints])
    path = tmp_path / "ckpt" / "epoch=1-step=8.ckpt"

    plain = LitLeNet.load_from_checkpoint(path, map_location="cpu")
    for name in WEIGHTS:
        assert torch.equal(plain.get_parameter(name) != 0, after[1][name].cpu()), name

    resumed = PruningCallback(scope="global", schedule=schedule, make_permanent=False)
    model, _, resumed_after = _fit(resumed, tmp_path / "cpu", accelerator="cpu", epochs=3, ckpt_path=path)
    for name in WEIGHTS:
        mask = resumed_after[-1][name]
        assert mask.device.type == "cpu"
        assert torch.equal(mask, after[1][name].cpu()), name
        assert torch.equal(model.get_submodule(name.split(".")[0]).weight[~mask], torch.zeros(int((~mask).sum())))


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_callback_releases_the_gpu_after_fit(tmp_path, masking: str) -> None:
    """Lightning moves the model and optimizer state to the CPU after fit; the masks and snapshot follow."""
    callback = PruningCallback(
        scope="global", schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=1), masking=masking, make_permanent=False
    )
    model, _, after = _fit(callback, tmp_path, epochs=2)
    held = _tensors_in(vars(callback))
    assert callback._snapshot is not None and callback._snapshot.optimizers[0]["state"], "momentum buffers"
    assert held and all(t.device.type == "cpu" for t in held), sorted({str(t.device) for t in held})

    on_gpu = Spy(callback, before=False)  # a second fit of the same model takes the masks back to the GPU
    _trainer(tmp_path, [callback, on_gpu], epochs=1).fit(model, lenet_data())
    for name in WEIGHTS:
        assert on_gpu.seen[0][name].device.type == "cuda", name
        assert torch.equal(on_gpu.seen[0][name].cpu(), after[-1][name].cpu()), name


class _FailAt(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 2:
            raise RuntimeError("failing on purpose")


@pytest.mark.parametrize("masking", ["reparametrize", "in_place"])
def test_callback_releases_the_gpu_after_a_failed_fit(tmp_path, masking: str) -> None:
    """A fit that raises skips `teardown`; the masks and snapshot still leave the GPU with the model."""
    callback = PruningCallback(
        scope="global", schedule=Explicit({1: 0.5}), rewind=Rewind(epoch=1), masking=masking, make_permanent=False
    )
    with pytest.raises(RuntimeError, match="failing on purpose"):
        _fit(callback, tmp_path, epochs=3, extra=[_FailAt()])
    held = _tensors_in(vars(callback))
    assert callback._snapshot is not None
    assert held and all(t.device.type == "cpu" for t in held), sorted({str(t.device) for t in held})


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1, "fused": True}),
        (torch.optim.Adam, {"lr": 0.01, "amsgrad": True, "fused": True}),
        (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.5, "fused": True}),
        (torch.optim.Adam, {"lr": 0.01, "capturable": True, "foreach": True}),
    ],
    ids=["SGD-fused", "Adam-fused", "AdamW-fused", "Adam-capturable"],
)
def test_zero_preserving_fused_optimizers_on_gpu(cls, options) -> None:
    check_zero_preserving(cls, options, "cuda")
