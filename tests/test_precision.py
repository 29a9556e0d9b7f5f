"""Half-precision parameters, mixed precision, and the CUDA path when a GPU is present."""

from __future__ import annotations

import pytest
import torch
from lightning import Trainer
from torch import nn

from lightning_prune import PruningCallback, core
from lightning_prune.methods import resolve_method
from lightning_prune.targets import resolve_targets
from tests.tutorial import LitLeNet, lenet_data

DEVICES = [pytest.param("cpu", id="cpu")]
if torch.cuda.is_available():
    DEVICES.append(pytest.param("cuda", id="cuda"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("method", ["l1_unstructured", "random_unstructured", "ln_structured", "random_structured"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_half_and_double_parameters(device: str, dtype: torch.dtype, method: str, scope: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).to(device=device, dtype=dtype)
    targets = resolve_targets(model)
    pruning = resolve_method(method, dim=0)
    masks = core.compute_masks(targets, pruning, 0.5, scope=scope, generator=torch.Generator().manual_seed(0))
    core.commit_masks(targets, masks)
    for target in targets:
        assert target.mask is not None
        assert target.mask.device.type == device and target.mask.dtype == torch.bool
    stats = core.sparsity_stats(targets, pruning)
    assert stats.overall == pytest.approx(0.5, abs=0.05)
    out = model(torch.randn(3, 16, device=device, dtype=dtype))
    assert out.dtype == dtype


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_trainer_precisions(tmp_path, precision: str) -> None:
    torch.manual_seed(0)
    model = LitLeNet()
    callback = PruningCallback(scope="global", schedule=0.5, make_permanent=True)
    trainer = Trainer(
        max_epochs=1,
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    trainer.fit(model, lenet_data())
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.5 * sum(w.numel() for w in weights))
