"""Property tests of the core: events over random shapes, dtypes, devices, sparsities and sequences."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_prune import core
from lightning_prune.masks import count_for
from lightning_prune.methods import resolve_method
from lightning_prune.targets import resolve_targets

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
METHODS = ["l1_unstructured", "random_unstructured", "ln_structured", "random_structured"]


def _model(widths: list[int], dtype: torch.dtype, device: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(a, b) for a, b in zip(widths, widths[1:])]
    return nn.Sequential(*layers).to(device=device, dtype=dtype)


def _event(targets, method, sparsity, scope, seed):
    generator = torch.Generator().manual_seed(seed)
    return core.compute_masks(targets, method, sparsity, scope=scope, generator=generator)


@settings(max_examples=40, deadline=None)
@given(
    widths=st.lists(st.integers(1, 9), min_size=2, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    device=st.sampled_from(DEVICES),
    name=st.sampled_from(METHODS),
    scope=st.sampled_from(["layer", "global"]),
    sparsities=st.lists(st.floats(0, 1), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_event_sequences(widths, dtype, device, name, scope, sparsities, seed) -> None:
    model = _model(widths, dtype, device, seed)
    targets = resolve_targets(model)
    method = resolve_method(name, dim=0)
    reached = 0.0
    for step, sparsity in enumerate(sorted(sparsities)):
        before = core.current_masks(targets)
        masks = _event(targets, method, sparsity, scope, seed + step)
        again = _event(targets, method, sparsity, scope, seed + step)
        assert all(torch.equal(a, b) for a, b in zip(masks, again)), "deterministic under a seed"
        assert all(not (m & ~b).any() for m, b in zip(masks, before)), "masks never regrow"
        core.commit_masks(targets, masks)
        counts = [method.units(m) for m in masks]
        if scope == "global":
            pruned, total = sum(p for p, _ in counts), sum(t for _, t in counts)
            assert pruned == max(count_for(sparsity, total), round(reached * total))
        else:
            for pruned, total in counts:
                assert pruned == max(count_for(sparsity, total), count_for(reached, total))
        reached = sparsity
        for target, mask in zip(targets, masks):
            assert target.mask is not None and target.mask.device.type == device
            assert torch.equal(target.mask, mask)
            assert (target.module.weight[~mask] == 0).all()


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=2, max_size=3),
    name=st.sampled_from(METHODS),
    sparsities=st.lists(st.floats(0, 1), min_size=1, max_size=3),
    seed=st.integers(0, 1000),
)
def test_global_equals_layer_for_a_single_target(shape, name, sparsities, seed) -> None:
    torch.manual_seed(seed)
    weight = torch.randn(*shape)
    method = resolve_method(name, dim=0)
    layer = global_ = torch.ones_like(weight, dtype=torch.bool)
    for step, sparsity in enumerate(sorted(sparsities)):
        g = torch.Generator().manual_seed(seed + step)
        layer = method.masks([weight], [layer], sparsity, scope="layer", generator=g)[0]
        g = torch.Generator().manual_seed(seed + step)
        global_ = method.masks([weight], [global_], sparsity, scope="global", generator=g)[0]
        assert torch.equal(layer, global_)


def test_an_unpruned_target_reads_as_an_all_true_mask_that_takes_no_memory() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Linear(200, 10))
    targets = resolve_targets(model)
    masks = core.current_masks(targets)
    assert [m.shape for m in masks] == [(200, 300), (10, 200)]
    assert all(bool(m.all()) and m.stride() == (0, 0) and m.untyped_storage().nbytes() == 1 for m in masks)
    new = core.compute_masks(targets, resolve_method("l1_unstructured"), 0.5, scope="global")
    assert all(m.is_contiguous() for m in new)
    core.commit_masks(targets, new)
    assert [t.mask.is_contiguous() for t in targets] == [True, True]
    assert sum(int((~t.mask).sum()) for t in targets) == round(0.5 * (200 * 300 + 10 * 200))


def test_committed_masks_are_copies_unless_handed_over() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    targets = resolve_targets(model)
    masks = [torch.rand(t.parameter.shape, generator=torch.Generator().manual_seed(0)) > 0.5 for t in targets]
    core.commit_masks(targets[:1], masks[:1])
    core.commit_masks(targets[1:], masks[1:], copy=False)
    assert model[0].weight_mask is not masks[0] and torch.equal(model[0].weight_mask, masks[0])
    assert model[1].weight_mask is masks[1]


def test_an_all_true_mask_committed_to_a_tied_tensor_is_one_buffer() -> None:
    first, second = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    second.weight = first.weight
    targets = resolve_targets(nn.Sequential(first, second))
    assert [len(t.holders) for t in targets] == [2]
    core.commit_masks(targets, core.current_masks(targets))
    assert first.weight_mask is second.weight_mask and first.weight_mask.is_contiguous()


def test_a_tied_tensor_that_torch_pruned_in_one_holder_counts_those_zeros() -> None:
    """``prune.random_unstructured(lm.head, ...)`` masks the tensor in the head only: its zeros count for the
    one tensor, and both holders end up with the same mask."""
    from torch.nn.utils import prune

    torch.manual_seed(0)
    embedding, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight
    model = nn.Sequential(embedding, head)
    prune.random_unstructured(head, "weight", amount=0.5)
    targets = resolve_targets(model)
    method = resolve_method("l1_unstructured")
    assert core.sparsity_stats(targets, method).per_target[targets[0].qualname] == core.Counts(20, 40)
    for sparsity, pruned in ((0.5, 20), (0.75, 30)):  # 0.5 is met already: nothing changes
        core.commit_masks(targets, core.compute_masks(targets, method, sparsity, scope="layer"))
        assert torch.equal(embedding.weight_mask, head.weight_mask)
        assert int((~head.weight_mask).sum()) == pruned
        assert int((head.weight == 0).sum()) == int((embedding.weight == 0).sum()) == pruned
    core.make_permanent(targets)
    assert head.weight is embedding.weight and int((head.weight == 0).sum()) == 30
