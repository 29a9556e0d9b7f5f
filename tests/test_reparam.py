"""The reparametrization: tutorial layout, torch interoperability, deepcopy, pickling, loading."""

from __future__ import annotations

import copy
import io
import pickle
import weakref
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from lightning_prune import reparam


def _mask(shape, seed=0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) > 0.5


def test_layout_matches_tutorial() -> None:
    layer = nn.Linear(3, 4)
    param = layer.weight
    reparam.apply(layer, "weight", _mask((4, 3)))
    assert layer.weight_orig is param, "the very same Parameter, so optimizers keep working"
    assert layer.weight_mask.dtype == torch.bool
    # torch moves `weight_orig` after `bias`; here it keeps the weight's place (see below)
    assert [n for n, _ in layer.named_parameters()] == ["weight_orig", "bias"]
    assert [n for n, _ in layer.named_buffers()] == ["weight_mask"]
    assert list(layer.state_dict()) == ["weight_orig", "bias", "weight_mask"]
    assert torch.equal(layer.weight, param.detach() * layer.weight_mask), "zeros show before any forward"
    assert prune.is_pruned(layer)


def test_forward_uses_mask_and_gradients_are_masked() -> None:
    layer = nn.Linear(3, 4)
    reparam.apply(layer, "weight", _mask((4, 3)))
    layer(torch.randn(5, 3)).sum().backward()
    assert layer.weight_orig.grad is not None
    assert layer.weight_orig.grad[~layer.weight_mask].eq(0).all()


def test_update_never_regrows() -> None:
    layer = nn.Linear(3, 4)
    first = _mask((4, 3), 0)
    reparam.apply(layer, "weight", first)
    reparam.update(layer, "weight", torch.ones(4, 3, dtype=torch.bool))
    assert torch.equal(layer.weight_mask, first)
    with pytest.raises(ValueError, match="shape"):
        reparam.update(layer, "weight", torch.ones(3, 4, dtype=torch.bool))


@pytest.mark.parametrize("remover", [pytest.param(reparam.remove, id="ours"), pytest.param(prune.remove, id="torch")])
def test_remove_makes_permanent(remover) -> None:
    layer = nn.Linear(3, 4)
    param, mask = layer.weight, _mask((4, 3))
    expected = param.detach() * mask
    reparam.apply(layer, "weight", mask)
    remover(layer, "weight")
    assert layer.weight is param and torch.equal(layer.weight.detach(), expected)
    assert list(layer.state_dict()) == ["weight", "bias"]
    assert not prune.is_pruned(layer)
    assert not layer._forward_pre_hooks and not layer._load_state_dict_pre_hooks, "no hook left behind"
    layer.load_state_dict(nn.Linear(3, 4).state_dict())  # plain loading works again
    prune.l1_unstructured(layer, "weight", amount=0.5)  # torch on its own again: a plain state_dict is refused
    with pytest.raises(RuntimeError, match="weight_orig"):
        layer.load_state_dict(nn.Linear(3, 4).state_dict())


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
def test_remove_makes_an_8_bit_float_weight_permanent(dtype) -> None:
    """8-bit floats do not multiply by a bool tensor; a failed removal would leave the hook without its mask."""
    module = nn.Module()
    module.w = nn.Parameter(torch.randn(4, 4).to(dtype), requires_grad=False)
    param, mask = module.w, _mask((4, 4))
    expected = param.float() * mask
    reparam.apply(module, "w", mask)
    reparam.remove(module, "w")
    assert module.w is param and torch.equal(module.w.float(), expected)
    assert not module._buffers and not module._forward_pre_hooks


@pytest.mark.parametrize("assign", [False, True])
def test_a_float_mask_from_torch_loads_as_a_bool_mask(assign) -> None:
    """With ``assign=True`` the loaded tensor itself becomes the buffer: a float one broke the next ``&=``."""
    torch.manual_seed(0)
    reference, layer = nn.Linear(6, 4), nn.Linear(6, 4)
    prune.l1_unstructured(reference, "weight", amount=0.25)
    reparam.apply(layer, "weight", _mask((4, 6)))
    layer.load_state_dict(reference.state_dict(), assign=assign)
    assert layer.weight_mask.dtype == torch.bool and torch.equal(layer.weight_mask, reference.weight_mask.bool())
    reparam.update(layer, "weight", _mask((4, 6), 1))
    assert torch.equal(layer.weight_mask, reference.weight_mask.bool() & _mask((4, 6), 1))


def test_remove_unpruned_is_an_error() -> None:
    with pytest.raises(ValueError, match="not pruned"):
        reparam.remove(nn.Linear(2, 2), "weight")


def test_apply_rejects_non_float_and_leaves_module() -> None:
    module = nn.Module()
    module.register_parameter("count", nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False))
    with pytest.raises(ValueError, match="floating-point"):
        reparam.apply(module, "count")
    assert list(module._parameters) == ["count"] and not module._buffers


def test_apply_rolls_back_on_bad_mask() -> None:
    layer = nn.Linear(3, 4)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        reparam.apply(layer, "weight", torch.ones(2, 2, dtype=torch.bool))
    assert list(layer.state_dict()) == list(before) and not prune.is_pruned(layer)


def test_apply_with_a_bad_mask_leaves_a_torch_pruned_tensor_as_it_was() -> None:
    layer = nn.Linear(3, 4)
    prune.l1_unstructured(layer, "weight", amount=0.5)
    hooks, mask = list(layer._forward_pre_hooks.values()), layer.weight_mask.clone()
    with pytest.raises(ValueError, match=r"shape \(4, 3\) for `weight`, got \(5, 5\)"):
        reparam.apply(layer, "weight", torch.ones(5, 5, dtype=torch.bool))
    assert list(layer._forward_pre_hooks.values()) == hooks and not layer._load_state_dict_pre_hooks
    assert layer.weight_mask.dtype == torch.float32 and torch.equal(layer.weight_mask, mask)


def test_parameters_keep_their_places(monkeypatch: pytest.MonkeyPatch) -> None:
    """Optimizers index their state by the order of ``parameters()``: applying, removing and a failed
    apply all leave every parameter where it was (``torch.nn.utils.prune`` moves it to the end)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    names = [name for name, _ in model.named_parameters()]
    params = list(model.parameters())
    reparam.apply(model[0], "weight", torch.rand(4, 3) > 0.5)
    reparam.apply(model[1], "weight")
    assert [name for name, _ in model.named_parameters()] == ["0.weight_orig", "0.bias", "1.weight_orig", "1.bias"]
    assert all(a is b for a, b in zip(model.parameters(), params))
    reparam.remove(model[0], "weight")
    reparam.remove(model[1], "weight")
    assert [name for name, _ in model.named_parameters()] == names
    assert all(a is b for a, b in zip(model.parameters(), params))

    def broken(module: nn.Module, name: str) -> None:
        raise RuntimeError("hook registration failed")

    monkeypatch.setattr(reparam, "_register_hooks", broken)
    with pytest.raises(RuntimeError, match="hook registration"):
        reparam.apply(model[0], "weight")
    assert [name for name, _ in model.named_parameters()] == names and not list(model.buffers())


def test_adopts_torch_pruned_tensor() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    prune.l1_unstructured(layer, "weight", amount=0.4)
    prune.l1_unstructured(layer, "weight", amount=0.5)
    expected = layer.weight_mask.bool().clone()
    reparam.apply(layer, "weight")
    assert torch.equal(layer.weight_mask, expected) and layer.weight_mask.dtype == torch.bool
    hooks = [h for h in layer._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]
    assert len(hooks) == 1 and isinstance(hooks[0], reparam.MaskHook), "adopted, not doubled"


def test_adopting_torch_pruning_stacked_on_ours_leaves_one_load_hook() -> None:
    layer = nn.Linear(6, 4)
    reparam.apply(layer, "weight", torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.5)
    prune.l1_unstructured(layer, "weight", amount=0.5)  # a container holding our hook and torch's
    reparam.apply(layer, "weight", torch.ones(4, 6, dtype=torch.bool))
    assert len(layer._load_state_dict_pre_hooks) == 1
    reparam.remove(layer, "weight")
    assert not layer._load_state_dict_pre_hooks and not layer._forward_pre_hooks


@pytest.mark.parametrize("remover", [prune.remove, reparam.remove], ids=["torch", "ours"])
def test_removing_torch_pruning_stacked_on_ours_leaves_no_working_load_hook(remover) -> None:
    """Once the container holding our hook is removed, a plain state dict is refused as torch alone refuses it."""
    layer, alone = nn.Linear(4, 3), nn.Linear(4, 3)
    reparam.apply(layer, "weight", _mask((3, 4)))
    prune.l1_unstructured(layer, "weight", amount=0.3)  # a container holding our hook and torch's
    remover(layer, "weight")
    if remover is reparam.remove:
        assert not layer._load_state_dict_pre_hooks
    plain = nn.Linear(4, 3).state_dict()
    for module in (layer, alone):
        prune.random_unstructured(module, "weight", amount=0.5)
        with pytest.raises(RuntimeError, match="Missing key"):
            module.load_state_dict(plain)


def test_a_mask_given_to_two_layers_becomes_a_buffer_of_each() -> None:
    first, second = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    mask = torch.tensor([[True, True], [False, True]])
    for layer in (first, second):
        reparam.apply(layer, "weight", mask)
    reparam.update(second, "weight", torch.tensor([[False, True], [True, True]]))
    assert first.weight_mask.tolist() == mask.tolist() == [[True, True], [False, True]]
    assert second.weight_mask.tolist() == [[False, True], [False, True]]
    handed = torch.tensor([[True, False], [True, True]])
    third = nn.Linear(2, 2, bias=False)
    reparam.apply(third, "weight", handed, copy=False)
    assert third.weight_mask is handed


def test_per_sample_gradients_and_ensembles_with_torch_func_as_for_torch() -> None:
    """The recipes of `torch.func`'s documentation, with the buffers passed as transform arguments."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    x, y = torch.randn(5, 4), torch.randn(5, 3)

    def pruned(ours: bool, seed: int) -> nn.Linear:
        torch.manual_seed(seed)
        layer = nn.Linear(4, 3)
        mask = torch.rand(3, 4) > 0.5
        if ours:
            reparam.apply(layer, "weight", mask)
        else:
            prune.custom_from_mask(layer, "weight", mask)
        return layer

    results = []
    for ours in (False, True):
        layer = pruned(ours, 0)
        params = {k: v.detach() for k, v in layer.named_parameters()}
        buffers = {k: v.detach() for k, v in layer.named_buffers()}

        def loss(params, buffers, sample, target, layer=layer):
            out = functional_call(layer, (params, buffers), (sample.unsqueeze(0),))
            return nn.functional.mse_loss(out, target.unsqueeze(0))

        per_sample = vmap(grad(loss), in_dims=(None, None, 0, 0))(params, buffers, x, y)["weight_orig"]
        models = [pruned(ours, seed) for seed in (1, 2, 3)]
        stacked = stack_module_state(models)
        base = pruned(ours, 4).to("meta")
        ensemble = vmap(partial(functional_call, base), in_dims=((0, 0), None))(stacked, (x,))
        assert torch.allclose(ensemble, torch.stack([m(x) for m in models]))
        results.append(per_sample)
    assert torch.allclose(results[0], results[1]) and results[1].shape == (5, 3, 4)


def test_a_parametrized_orig_fails_loudly() -> None:
    """`weight_orig` under `torch.nn.utils.parametrize` is no parameter of the module any more: the hook
    says so, rather than leave the forward the masked weight of the last call."""
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    layer = nn.Linear(4, 4)
    reparam.apply(layer, "weight", _mask((4, 4)))
    parametrize.register_parametrization(layer, "weight_orig", Double())
    with pytest.raises(KeyError, match="weight_orig"):
        layer(torch.randn(2, 4))


def test_a_tensor_assigned_over_a_pruned_weight_is_refused_as_torch_refuses_it() -> None:
    """`layer.weight = nn.Parameter(...)` beside `weight_orig`: the forward pre-hook's assignment fails,
    as torch's does, rather than leave the new parameter unmasked."""
    layer = nn.Linear(4, 4)
    reparam.apply(layer, "weight", _mask((4, 4)))
    layer.weight = nn.Parameter(torch.randn(4, 4))
    with pytest.raises(TypeError, match="cannot assign"):
        layer(torch.randn(2, 4))


def test_a_mask_given_new_memory_shows_in_the_next_forward() -> None:
    """`weight_mask.data = other` moves no version counter; the cached float mask follows it all the same."""
    layer = nn.Linear(3, 2, bias=False)
    reparam.apply(layer, "weight", torch.ones(2, 3, dtype=torch.bool))
    x = torch.ones(1, 3)
    layer(x)
    layer.weight_mask.data = torch.zeros(2, 3, dtype=torch.bool)
    assert torch.equal(layer(x), torch.zeros(1, 2))


def test_deepcopy_and_pickle_after_training_forward() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    reparam.apply(model[0], "weight", _mask((4, 3)))
    model(torch.randn(2, 3)).sum().backward()  # module.weight is now part of a graph
    with pytest.raises(RuntimeError):
        torch_pruned = nn.Linear(3, 4)
        prune.random_unstructured(torch_pruned, "weight", 0.5)
        torch_pruned(torch.randn(1, 3)).sum().backward()
        copy.deepcopy(torch_pruned)
    clone = copy.deepcopy(model)
    x = torch.randn(7, 3)
    assert torch.equal(clone(x), model(x))
    assert clone[0].weight_orig is not model[0].weight_orig
    reparam.remove(clone[0], "weight")
    assert prune.is_pruned(model) and not prune.is_pruned(clone)
    restored = pickle.loads(pickle.dumps(model))
    assert torch.equal(restored(x), model(x))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), model(x))


def test_a_forward_in_inference_mode_leaves_training_forwards_working() -> None:
    """The mask's float copy is made once per mask change, by whichever forward comes first; made
    in inference mode it would be an inference tensor that no training forward could save."""
    layer = nn.Linear(3, 4)
    reparam.apply(layer, "weight", _mask((4, 3)))
    reparam.update(layer, "weight", _mask((4, 3), seed=1))
    with torch.inference_mode():
        expected = layer(torch.ones(2, 3))
    out = layer(torch.ones(2, 3))
    out.sum().backward()
    assert torch.equal(out.detach(), expected)
    assert torch.equal(layer.weight_orig.grad != 0, layer.weight_mask.expand(4, 3))


@pytest.mark.parametrize("torch_first", [False, True], ids=["new", "adopted-from-torch"])
def test_a_mask_set_in_inference_mode_serves_later_forwards_and_updates(torch_first: bool) -> None:
    """A mask buffer made inside ``torch.inference_mode()`` (as torch's pruning may be called there) is no
    inference tensor: forwards in inference mode, training forwards and later updates use it, as with torch."""
    layer = nn.Linear(3, 4)
    with torch.inference_mode():
        if torch_first:
            prune.custom_from_mask(layer, "weight", _mask((4, 3), seed=2))
        reparam.apply(layer, "weight", _mask((4, 3)))
    assert not layer.weight_mask.is_inference()
    first = _mask((4, 3)) & (_mask((4, 3), seed=2) if torch_first else True)
    with torch.inference_mode():
        out = layer(torch.ones(2, 3))
    assert torch.equal(out, F.linear(torch.ones(2, 3), layer.weight_orig.detach() * first, layer.bias.detach()))
    reparam.update(layer, "weight", _mask((4, 3), seed=1))
    mask = first & _mask((4, 3), seed=1)
    assert torch.equal(layer.weight_mask, mask)
    out = layer(torch.ones(2, 3))
    out.sum().backward()
    assert torch.equal(layer.weight_orig.grad != 0, mask)


def test_plain_state_dict_loads_into_pruned_module() -> None:
    layer = nn.Linear(3, 4)
    mask = _mask((4, 3))
    reparam.apply(layer, "weight", mask)
    plain = nn.Linear(3, 4).state_dict()
    layer.load_state_dict(plain)
    assert torch.equal(layer.weight_orig.detach(), plain["weight"])
    assert torch.equal(layer.weight_mask, mask), "a state_dict without a mask keeps the current one (a rewind)"
    assert torch.equal(
        layer(torch.ones(1, 3)), nn.functional.linear(torch.ones(1, 3), plain["weight"] * mask, plain["bias"])
    )
    other = _mask((4, 3), seed=1)
    layer.load_state_dict({**plain, "weight_mask": other})
    assert torch.equal(layer.weight_mask, other)


def test_tied_parameter_both_holders_see_mask() -> None:
    first, second = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    second.weight = first.weight
    mask = _mask((4, 4))
    for module in (first, second):
        reparam.apply(module, "weight", mask)
    assert first.weight_orig is second.weight_orig
    x = torch.randn(2, 4)
    assert torch.equal(first(x), second(x))
    assert torch.equal(first(x), x @ (first.weight_orig * mask).T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_masked_weight_is_orig_times_mask_bit_for_bit(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    """The masked weight is written in pieces (7 entries here) and equals torch's ``orig * mask``
    in every bit (``-0.0`` for a pruned negative entry), and is NaN where it is (a pruned infinite or
    NaN entry; a NaN's bits may differ with the layout)."""
    monkeypatch.setattr(reparam, "_CHUNK", 7)
    torch.manual_seed(0)
    layer = nn.Linear(5, 6).to(dtype)
    with torch.no_grad():
        layer.weight[0, :3] = torch.tensor([float("inf"), float("-inf"), float("nan")])
    mask = torch.rand(6, 5) > 0.5
    mask[0, :3] = False
    reparam.apply(layer, "weight", mask)
    expected = layer.weight_orig.detach() * mask.to(dtype)
    bits = torch.int16 if dtype == torch.bfloat16 else {torch.float32: torch.int32, torch.float64: torch.int64}[dtype]
    nan = expected.isnan()
    assert torch.equal(layer.weight.isnan(), nan) and int(nan.sum()) == 3
    assert torch.equal(layer.weight[~nan].view(bits), expected[~nan].view(bits))


def test_an_expanded_all_true_mask_becomes_a_buffer_of_its_own() -> None:
    layer = nn.Linear(3, 2)
    view = torch.ones((), dtype=torch.bool).expand(2, 3)  # what `core.current_masks` gives an unpruned tensor
    reparam.apply(layer, "weight", view)
    assert layer.weight_mask.is_contiguous() and layer.weight_mask.untyped_storage().nbytes() == 6
    reparam.update(layer, "weight", torch.tensor([[True, False, True], [True, True, False]]))
    assert layer.weight_mask.tolist() == [[True, False, True], [True, True, False]]


@pytest.mark.parametrize("first", ["eager forward", "compiled forward, then a new mask"])
def test_a_pruned_module_compiles_into_one_graph(first: str) -> None:
    """`torch.compile(fullgraph=True)`, as for `torch.nn.utils.prune`'s hook: no graph break, no recompilation
    when a mask changes in place, masked outputs and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer, x = nn.Linear(7, 5), torch.randn(3, 7)
    reparam.apply(layer, "weight", _mask((5, 7), 0))
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    if first == "eager forward":
        layer(x)  # fills the hook's cache of the mask in the weight's dtype
    else:
        compiled(x)
        reparam.update(layer, "weight", _mask((5, 7), 1))
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = compiled(x)
    mask = layer.weight_mask
    assert torch.equal(out, torch.nn.functional.linear(x, layer.weight_orig * mask, layer.bias))
    out.sum().backward()
    assert layer.weight_orig.grad is not None and not layer.weight_orig.grad[~mask].any()


def test_the_hook_frees_the_last_weight_before_it_makes_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once nothing but the module holds the last forward's tensor, the new one does not share the peak with it."""
    layer = nn.Linear(4, 3)
    reparam.apply(layer, "weight", _mask((3, 4)))
    layer(torch.randn(2, 4)).sum().backward()  # the graph that saved the weight is gone after backward
    last, freed = weakref.ref(layer.weight), []
    apply_mask = reparam.MaskHook.apply_mask

    def spy(self, module, compiling=None):
        freed.append(last() is None)
        return apply_mask(self, module, compiling)

    monkeypatch.setattr(reparam.MaskHook, "apply_mask", spy)
    out = layer(torch.ones(1, 4))
    assert freed == [True]
    assert torch.equal(
        out, torch.nn.functional.linear(torch.ones(1, 4), layer.weight_orig * layer.weight_mask, layer.bias)
    )


def test_a_forward_stopped_inside_the_hook_leaves_the_masked_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook drops the last weight first; stopped before it sets the next (a non-reentrant checkpoint's
    recompute stops that way), it leaves the masked weight, which `torch.nn.utils.prune` on top reads."""
    layer = nn.Linear(4, 3)
    reparam.apply(layer, "weight", _mask((3, 4)))
    layer(torch.randn(2, 4)).sum().backward()

    def stop(*args: object) -> None:
        raise RuntimeError("stopped")

    with monkeypatch.context() as patch:
        patch.setattr(reparam.MaskHook, "_multiplier", stop)
        with pytest.raises(RuntimeError, match="stopped"):
            layer(torch.randn(2, 4))
    assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)


def test_export_leaves_no_fake_tensor_in_the_hook() -> None:
    """Non-strict `torch.export` runs the hook on fake tensors, with `is_compiling()` true: the hook keeps no
    reference to them (nor so to the fake mode), and a grad-mode forward after it deep-copies as before."""
    if not hasattr(torch.compiler, "is_exporting"):
        pytest.skip("this torch has no torch.compiler.is_exporting")
    layer, x = nn.Linear(4, 3), torch.randn(2, 4)
    reparam.apply(layer, "weight", _mask((3, 4)))
    torch.export.export(layer, (x,), strict=False)
    hook = reparam.find_hook(layer, "weight")
    assert not isinstance(hook._last, torch.Tensor)
    layer(x)
    assert torch.equal(copy.deepcopy(layer).weight, layer.weight)


def _attention_with_pruned_out_proj() -> nn.MultiheadAttention:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, 2)
    reparam.apply(attention.out_proj, "weight", torch.rand(4, 4) > 0.5)
    reparam.hook_parents(attention)
    return attention


def _used_out_proj_weight(attention: nn.MultiheadAttention) -> torch.Tensor:
    """The ``out_proj.weight`` that a forward of ``attention`` uses (it never calls ``out_proj``)."""
    x = torch.randn(3, 1, 4)
    attention(x, x, x)[0].sum().backward()
    return attention.out_proj.weight


def test_attention_uses_the_masked_out_proj_weight_and_trains_it() -> None:
    attention = _attention_with_pruned_out_proj()
    out_proj = attention.out_proj
    with torch.no_grad():
        out_proj.weight_orig.add_(1.0)  # as an optimizer step would
    assert torch.equal(_used_out_proj_weight(attention), out_proj.weight_orig * out_proj.weight_mask)
    assert torch.equal(out_proj.weight_orig.grad != 0, out_proj.weight_mask)


def test_attention_hook_with_torch_pruning_stacked_on_out_proj() -> None:
    """torch's `prune` on top wraps the hook in a PruningContainer: the attention still uses the masked
    weight, and once torch's `prune.remove` took the pruning away the next forward drops the hook."""
    attention = _attention_with_pruned_out_proj()
    out_proj = attention.out_proj
    prune.l1_unstructured(out_proj, "weight", amount=0.25)
    with torch.no_grad():
        out_proj.weight_orig.add_(1.0)
    assert torch.equal(_used_out_proj_weight(attention), out_proj.weight_orig * out_proj.weight_mask)
    prune.remove(out_proj, "weight")
    _used_out_proj_weight(attention)
    assert not attention._forward_pre_hooks


def test_the_mask_hook_runs_before_the_hooks_of_old_style_weight_norm() -> None:
    """`nn.utils.weight_norm` computes `weight` from `weight_v` in its own forward pre-hook, registered first:
    ours runs before it, so the forward reads the current masked `weight_v` and trains `weight_v_orig`."""
    torch.manual_seed(0)
    layer = nn.utils.weight_norm(nn.Linear(4, 3))
    reparam.apply(layer, "weight_v", torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) > 0.5)
    x = torch.randn(5, 4)
    layer(x).sum().backward()
    assert layer.weight_v_orig.grad is not None and layer.weight_v_orig.grad.abs().sum() > 0
    with torch.no_grad():
        layer.weight_v_orig.add_(1.0)  # an optimizer step
        v = layer.weight_v_orig * layer.weight_v_mask
        expected = F.linear(x, layer.weight_g * v / v.norm(dim=1, keepdim=True), layer.bias)
        assert torch.allclose(layer(x), expected)
