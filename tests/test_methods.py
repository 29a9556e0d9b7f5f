"""Built-in and custom methods against torch.nn.utils.prune as the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lightning_prune import core
from lightning_prune.methods import resolve_method
from lightning_prune.targets import resolve_targets
from tests.tutorial import TutorialLeNet


class FooBarPruningMethod(prune.BasePruningMethod):
    """Prune every other entry in a tensor (the tutorial's custom method, unchanged)."""

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        mask = default_mask.clone()
        mask.view(-1)[::2] = 0
        return mask


def _ones(t: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(t, dtype=torch.bool)


TORCH_FIRST_EVENT = [
    pytest.param("l1_unstructured", {}, lambda m: prune.l1_unstructured(m, "weight", amount=0.3), 0.3, id="l1"),
    pytest.param(
        "random_unstructured", {}, lambda m: prune.random_unstructured(m, "weight", amount=0.3), 0.3, id="random"
    ),
    pytest.param(
        "ln_structured",
        {"dim": 0, "norm": 2},
        lambda m: prune.ln_structured(m, "weight", 0.5, n=2, dim=0),
        0.5,
        id="ln-dim0",
    ),
    pytest.param(
        "ln_structured",
        {"dim": 1, "norm": 1},
        lambda m: prune.ln_structured(m, "weight", 0.5, n=1, dim=1),
        0.5,
        id="l1-dim1",
    ),
    pytest.param(
        "random_structured",
        {"dim": 0},
        lambda m: prune.random_structured(m, "weight", 0.5, dim=0),
        0.5,
        id="random-struct",
    ),
    *(
        pytest.param(
            "ln_structured",
            {"dim": 0, "norm": n},
            lambda m, n=n: prune.ln_structured(m, "weight", 0.5, n=n, dim=0),
            0.5,
            id=f"ln-{n}",
        )
        for n in (float("-inf"), -1, 0.5)
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "torch_fn", "sparsity"), TORCH_FIRST_EVENT)
def test_first_event_equals_torch(name, kwargs, torch_fn, sparsity) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3)
    weight = conv.weight.detach().clone()
    torch.manual_seed(1)
    torch_fn(conv)
    torch.manual_seed(1)
    ours = resolve_method(name, **kwargs).masks([weight], [_ones(weight)], sparsity, scope="layer")[0]
    assert torch.equal(ours, conv.weight_mask.bool())


@pytest.mark.parametrize(("name", "kwargs", "torch_fn", "sparsity"), TORCH_FIRST_EVENT)
def test_first_event_in_float64_equals_torch(name, kwargs, torch_fn, sparsity) -> None:
    """float64 weights whose magnitudes (and row norms) differ by less than float32 can hold, and
    float64 random draws: torch ranks them in float64, and so must the masks."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3).double()
    with torch.no_grad():
        steps = torch.randperm(conv.weight.numel()).view_as(conv.weight).double()
        conv.weight.copy_(1.0 + steps * 2.0**-40)
    weight = conv.weight.detach().clone()
    assert len(weight.float().unique()) < weight.numel() // 2, "float32 would tie most of them"
    torch.manual_seed(1)
    torch_fn(conv)
    torch.manual_seed(1)
    ours = resolve_method(name, **kwargs).masks([weight], [_ones(weight)], sparsity, scope="layer")[0]
    assert torch.equal(ours, conv.weight_mask.bool())


@pytest.mark.parametrize(("name", "kwargs", "torch_fn", "sparsity"), TORCH_FIRST_EVENT)
@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
def test_8_bit_float_weights_prune_as_their_float32_values(name, kwargs, torch_fn, sparsity, scope, dtype) -> None:
    """torch's random and structured pruning refuse 8-bit floats; here they are scored in float32,
    which holds their values exactly, so the masks are those of the same values in float32."""
    torch.manual_seed(0)
    low = nn.Conv2d(3, 8, 3).weight.detach().to(dtype)
    method = resolve_method(name, **kwargs)
    masks = []
    for weight in (low, low.float()):
        torch.manual_seed(1)
        half = method.masks([weight], [_ones(weight)], sparsity / 2, scope=scope)[0]
        masks.append(method.masks([weight], [half], sparsity, scope=scope)[0])  # a second event, as iterated
    assert torch.equal(masks[0], masks[1])
    assert method.units(masks[0])[0] == round(sparsity * method.units(masks[0])[1])


@pytest.mark.parametrize(
    ("name", "torch_fn"),
    [
        pytest.param("l1_unstructured", lambda m, k: prune.l1_unstructured(m, "weight", amount=k), id="l1"),
        pytest.param("random_unstructured", lambda m, k: prune.random_unstructured(m, "weight", amount=k), id="random"),
    ],
)
def test_iterative_events_equal_torch_with_integer_amounts(name, torch_fn) -> None:
    """Cumulative targets 0.2 -> 0.5 -> 0.8 are torch's 'amount of what remains' as counts."""
    torch.manual_seed(0)
    layer = nn.Linear(30, 20)
    weight = layer.weight.detach().clone()
    method = resolve_method(name)
    mask = _ones(weight)
    pruned = 0
    for step, sparsity in enumerate((0.2, 0.5, 0.8)):
        torch.manual_seed(10 + step)
        torch_fn(layer, round(sparsity * 600) - pruned)
        torch.manual_seed(10 + step)
        mask = method.masks([weight], [mask], sparsity, scope="layer")[0]
        pruned = int((~mask).sum())
        assert pruned == round(sparsity * 600)
        assert torch.equal(mask, layer.weight_mask.bool())


@pytest.mark.parametrize(
    ("name", "torch_fn"),
    [
        pytest.param("random_unstructured", lambda m, k: prune.random_unstructured(m, "weight", amount=k), id="random"),
        pytest.param(
            "random_structured", lambda m, k: prune.random_structured(m, "weight", amount=k, dim=0), id="random-struct"
        ),
    ],
)
def test_a_layer_with_nothing_to_prune_draws_nothing_as_in_torch(name, torch_fn) -> None:
    """torch draws no numbers for an amount of 0; the draws of the layers after it must stay the same."""
    layers = [nn.Linear(2, 2), nn.Linear(30, 20)]  # 10% of 4 entries (or 2 rows) rounds to 0
    weights = [layer.weight.detach().clone() for layer in layers]
    method = resolve_method(name, dim=0)
    torch.manual_seed(3)
    for layer in layers:
        units = layer.weight.numel() if name == "random_unstructured" else layer.weight.shape[0]
        torch_fn(layer, round(0.1 * units))
    torch.manual_seed(3)
    ours = method.masks(weights, [_ones(w) for w in weights], 0.1, scope="layer")
    for layer, mask in zip(layers, ours):
        assert torch.equal(mask, layer.weight_mask.bool())
    assert bool(ours[0].all()) and not bool(ours[1].all())


def test_global_random_over_float64_and_float32_weights_draws_as_torch() -> None:
    """torch's `global_unstructured` draws over the weights' concatenation, float64 if any is."""
    torch.manual_seed(0)
    layers = [nn.Linear(6, 5).double(), nn.Linear(5, 4)]
    weights = [layer.weight.detach().clone() for layer in layers]
    torch.manual_seed(1)
    prune.global_unstructured([(m, "weight") for m in layers], prune.RandomUnstructured, amount=25)
    torch.manual_seed(1)
    ours = resolve_method("random_unstructured").masks(weights, [_ones(w) for w in weights], 25 / 50, scope="global")
    for layer, mask in zip(layers, ours):
        assert torch.equal(mask, layer.weight_mask.bool())


def test_global_unstructured_equals_torch() -> None:
    torch.manual_seed(0)
    model = TutorialLeNet()
    params = [
        (model.conv1, "weight"),
        (model.conv2, "weight"),
        (model.fc1, "weight"),
        (model.fc2, "weight"),
        (model.fc3, "weight"),
    ]
    weights = [getattr(m, n).detach().clone() for m, n in params]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.2)
    ours = resolve_method("l1_unstructured").masks(weights, [_ones(w) for w in weights], 0.2, scope="global")
    for mask, (module, _) in zip(ours, params):
        assert torch.equal(mask, module.weight_mask.bool())
    sparsities = [1 - m.float().mean().item() for m in ours]
    assert len(set(sparsities)) > 1, "global scope gives different per-layer sparsities"


def test_tutorial_walkthrough_on_conv1(lenet_seed: int = 0) -> None:
    """random 30% of conv1.weight, the 3 smallest biases, then ln_structured 50% along dim 0."""
    torch.manual_seed(lenet_seed)
    reference, ours = TutorialLeNet(), TutorialLeNet()
    ours.load_state_dict(reference.state_dict())
    torch.manual_seed(7)
    prune.random_unstructured(reference.conv1, name="weight", amount=0.3)
    prune.l1_unstructured(reference.conv1, name="bias", amount=3)
    prune.ln_structured(reference.conv1, name="weight", amount=0.5, n=2, dim=0)

    weight_target = resolve_targets(ours, ["conv1.weight"])
    bias_target = resolve_targets(ours, ["conv1.bias"])
    torch.manual_seed(7)
    core.commit_masks(
        weight_target, core.compute_masks(weight_target, resolve_method("random_unstructured"), 0.3, scope="layer")
    )
    core.commit_masks(
        bias_target, core.compute_masks(bias_target, resolve_method("l1_unstructured"), 0.5, scope="layer")
    )
    structured = resolve_method("ln_structured", dim=0, norm=2)
    core.commit_masks(weight_target, core.compute_masks(weight_target, structured, 0.5, scope="layer"))

    assert torch.equal(ours.conv1.weight_mask, reference.conv1.weight_mask.bool())
    assert torch.equal(ours.conv1.bias_mask, reference.conv1.bias_mask.bool())
    assert torch.equal(ours.conv1.weight, reference.conv1.weight)
    channels = ours.conv1.weight_mask.flatten(1).any(1)
    assert int(channels.sum()) == 3, "3 of 6 channels pruned"
    assert int((~ours.conv1.weight_mask[channels]).sum()) > 0, "the random zeros of the kept channels stay"
    assert prune.is_pruned(ours)


def test_global_structured_uses_size_normalised_norm() -> None:
    """Two layers with identical per-entry statistics but different slice sizes are pruned alike."""
    g = torch.Generator().manual_seed(0)
    small = torch.randn(40, 10, generator=g)
    large = small.repeat(1, 10)  # same RMS per row, 10x the entries
    method = resolve_method("ln_structured", dim=0, norm=2)
    masks = method.masks([small, large], [_ones(small), _ones(large)], 0.5, scope="global")
    assert torch.equal(masks[0].any(1), masks[1].any(1))
    assert int((~masks[0].any(1)).sum()) + int((~masks[1].any(1)).sum()) == 40


def test_random_structured_global_exact_slice_count() -> None:
    weights = [torch.randn(6, 4), torch.randn(10, 2, 3)]
    method = resolve_method("random_structured", dim=0)
    masks = method.masks(
        weights, [_ones(w) for w in weights], 0.25, scope="global", generator=torch.Generator().manual_seed(0)
    )
    assert sum(int((~m.flatten(1).any(1)).sum()) for m in masks) == 4


def test_foobar_unchanged_matches_tutorial() -> None:
    torch.manual_seed(0)
    reference, ours = nn.Linear(84, 10), nn.Linear(84, 10)
    FooBarPruningMethod.apply(reference, "bias")
    method = resolve_method(FooBarPruningMethod)
    mask = method.masks([ours.bias.detach()], [_ones(ours.bias)], 0.5, scope="layer")[0]
    assert torch.equal(mask, reference.bias_mask.bool())
    assert mask.tolist() == [False, True] * 5


def test_foobar_prunes_a_scalar_as_torch_does() -> None:
    """A 0-dim parameter (a learned scale): torch's `FooBarPruningMethod.apply` masks its one entry."""
    reference, ours = nn.Module(), nn.Module()
    reference.scale, ours.scale = nn.Parameter(torch.tensor(2.0)), nn.Parameter(torch.tensor(2.0))
    FooBarPruningMethod.apply(reference, "scale")
    for scope in ("layer", "global"):
        (mask,) = resolve_method(FooBarPruningMethod).masks(
            [ours.scale.detach()], [_ones(ours.scale)], 0.9, scope=scope
        )
        assert mask.shape == () and torch.equal(mask, reference.scale_mask.bool())


def test_foobar_prunes_an_8_bit_float_weight_as_the_tutorial_says() -> None:
    """Every other entry, as torch's ``FooBarPruningMethod.apply`` gives."""
    weight = torch.ones(6).to(torch.float8_e4m3fn)
    try:
        weight.clone()[::2] = 0
    except RuntimeError:  # torch 2.5 and earlier
        pytest.skip("this torch cannot fill an 8-bit float tensor, as the method does with its mask")
    for scope in ("layer", "global"):
        (mask,) = resolve_method(FooBarPruningMethod).masks([weight], [_ones(weight)], 0.5, scope=scope)
        assert mask.tolist() == [False, True] * 3


class _ReturnsNone(prune.BasePruningMethod):
    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        return None


class _ReturnsARow(prune.BasePruningMethod):
    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        return default_mask[:1]


@pytest.mark.parametrize(("cls", "got"), [(_ReturnsNone, "NoneType"), (_ReturnsARow, r"shape \(1, 3\)")])
def test_a_custom_mask_that_is_no_tensor_of_the_shape_given_is_named(cls, got: str) -> None:
    weight = torch.randn(4, 3)
    message = rf"`method={cls.__name__}`: its `compute_mask` returned a mask of {got} for a tensor of shape \(4, 3\)"
    with pytest.raises(ValueError, match=message):
        resolve_method(cls).masks([weight], [_ones(weight)], 0.5, scope="layer")


def test_custom_method_iterates_like_torch_container() -> None:
    torch.manual_seed(0)
    reference = nn.Linear(5, 4)
    weight = reference.weight.detach().clone()
    FooBarPruningMethod.apply(reference, "weight")
    FooBarPruningMethod.apply(reference, "weight")  # the container passes surviving entries only
    method = resolve_method("tests.test_methods.FooBarPruningMethod")
    mask = method.masks([weight], [_ones(weight)], 0.5, scope="layer")[0]
    mask = method.masks([weight], [mask], 0.9, scope="layer")[0]
    assert torch.equal(mask, reference.weight_mask.bool())


def test_custom_method_gets_fraction_of_what_remains() -> None:
    seen = []

    class Recording(prune.L1Unstructured):
        def __init__(self, amount):
            seen.append(amount)
            super().__init__(amount)

    weight = torch.randn(10, 10)
    method = resolve_method(Recording)
    mask = method.masks([weight], [_ones(weight)], 0.5, scope="layer")[0]
    mask = method.masks([weight], [mask], 0.75, scope="layer")[0]
    assert seen == [0.5, 0.5]
    assert int((~mask).sum()) == 75
    again = method.masks([weight], [mask], 0.6, scope="layer")[0]
    assert torch.equal(again, mask) and len(seen) == 2, "a met target changes nothing"


class _ColumnL2(prune.LnStructured):
    """Prunes columns unless told otherwise: its own defaults for `n` and `dim`."""

    def __init__(self, amount: float, n: float = 2, dim: int = 1) -> None:
        super().__init__(amount, n=n, dim=dim)


class _EveryNth(prune.BasePruningMethod):
    """Keeps every `n`-th surviving entry pruned; `n` must stay an int (it slices)."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, n: int = 3) -> None:
        self.n = n

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        mask = default_mask.clone()
        mask.view(-1)[:: self.n] = 0
        return mask


@pytest.mark.parametrize(
    ("cls", "kwargs", "reference"),
    [
        pytest.param(_ColumnL2, {}, lambda m: _ColumnL2.apply(m, "weight", 0.5, n=2, dim=1), id="own-dim-default"),
        pytest.param(_ColumnL2, {"dim": 0}, lambda m: _ColumnL2.apply(m, "weight", 0.5, n=2, dim=0), id="dim-given"),
        pytest.param(
            prune.LnStructured, {}, lambda m: prune.ln_structured(m, "weight", 0.5, n=2, dim=-1), id="torch-dim-default"
        ),
        pytest.param(_EveryNth, {}, lambda m: _EveryNth.apply(m, "weight"), id="own-int-n"),
        pytest.param(_EveryNth, {"norm": 4}, lambda m: _EveryNth.apply(m, "weight", n=4), id="int-n-given"),
        pytest.param(
            prune.LnStructured,
            {"dim": 0, "norm": "inf"},
            lambda m: prune.ln_structured(m, "weight", 0.5, n=float("inf"), dim=0),
            id="named-norm-as-a-number",
        ),
    ],
)
def test_custom_method_keeps_its_defaults_unless_given(cls, kwargs, reference) -> None:
    """`dim` and `norm` reach a custom class only when given, and as given (an int stays an int);
    where its `__init__` has no default for them, the built-ins' 0 and 2 (torch's `LnStructured` `n`)."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    weight = layer.weight.detach().clone()
    reference(layer)
    sparsity = float((layer.weight_mask == 0).float().mean())
    ours = resolve_method(cls, **kwargs).masks([weight], [_ones(weight)], sparsity, scope="layer")[0]
    assert torch.equal(ours, layer.weight_mask.bool())


class _NextColumn(prune.BasePruningMethod):
    """A "global" method that needs the whole tensor: a fresh mask pruning its first living column."""

    PRUNING_TYPE = "global"

    def __init__(self, amount: float) -> None:
        self.amount = amount

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        column = int((default_mask == 0).all(0).sum())  # the columns pruned so far are the first ones
        mask = torch.ones_like(default_mask)  # not `default_mask * ...`: forgets the earlier zeros
        mask[:, column] = 0
        return mask


def test_a_global_type_custom_method_sees_the_whole_tensor_and_its_masks_never_regrow() -> None:
    weight = torch.randn(4, 6)
    method = resolve_method(_NextColumn)
    mask = method.masks([weight], [_ones(weight)], 4 / 24, scope="layer")[0]
    mask = method.masks([weight], [mask], 8 / 24, scope="layer")[0]
    assert (~mask).all(0).tolist() == [True, True, False, False, False, False]
    assert int((~mask).sum()) == 8


def test_a_custom_global_event_gives_each_tensor_a_mask_of_its_own() -> None:
    """Not views of one concatenation: a buffer made of a view would save the whole of it."""
    weights = [torch.randn(3, 4), torch.randn(50, 20)]
    masks = resolve_method(prune.L1Unstructured).masks(weights, [_ones(w) for w in weights], 0.5, scope="global")
    assert [m.untyped_storage().nbytes() for m in masks] == [12, 1000]


def test_dim_takes_any_integer() -> None:
    assert resolve_method("ln_structured", dim=np.int64(1)).dim == 1
    assert resolve_method("ln_structured").dim == 0 and resolve_method("ln_structured").norm == 2.0


@pytest.mark.parametrize(
    ("method", "error", "match"),
    [
        pytest.param("l2_magic", ValueError, r"one of \['l1_unstructured'", id="unknown-name"),
        pytest.param("nowhere.Missing", ValueError, "could not be imported", id="bad-path"),
        pytest.param(nn.Linear, TypeError, "BasePruningMethod", id="not-a-method"),
        pytest.param(prune.L1Unstructured(0.3), TypeError, "pass the class, not an instance", id="instance"),
        pytest.param(prune.BasePruningMethod, TypeError, "abstract", id="abstract"),
    ],
)
def test_bad_methods(method, error, match) -> None:
    with pytest.raises(error, match=match):
        resolve_method(method)


@pytest.mark.parametrize("norm", [float("nan"), "nuc", "foo", True, [2]])
def test_bad_norm(norm) -> None:
    with pytest.raises(ValueError, match="`norm`"):
        resolve_method("ln_structured", norm=norm)


def test_custom_method_draws_from_the_generator_it_is_given() -> None:
    """A custom random method draws from the global RNG; given a generator (the callback's, seeded
    alike on every rank), the draws follow it and the global RNG is left as it was."""
    weight = torch.randn(20, 20)
    method = resolve_method(prune.RandomUnstructured)

    def masks(seed: int, global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        generator = torch.Generator().manual_seed(seed)
        mask = method.masks([weight], [_ones(weight)], 0.5, scope="layer", generator=generator)[0]
        assert torch.equal(torch.rand(3), _draw(global_seed)), "the global RNG is left as it was"
        return mask

    first = masks(seed=1, global_seed=10)
    assert torch.equal(masks(seed=1, global_seed=20), first), "the global RNG state does not matter"
    assert not torch.equal(masks(seed=2, global_seed=10), first)
    assert int((~first).sum()) == 200


def _draw(seed: int) -> torch.Tensor:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.rand(3)


class _NoDim(prune.BasePruningMethod):
    PRUNING_TYPE = "structured"

    def __init__(self, amount: float) -> None:
        self.amount = amount

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        return default_mask


def test_custom_structured_method_checks_targets() -> None:
    """Its instances' ``dim`` must fit every target (torch's iterative pruning slices by it)."""
    method = resolve_method(prune.LnStructured, dim=3, norm=2)
    with pytest.raises(ValueError, match=r"`dim` in \[-2, 1\].*'fc.weight'.*got 3"):
        method.check_target("fc.weight", torch.Size([3, 4]))
    resolve_method(prune.LnStructured, dim=-1, norm=2).check_target("fc.weight", torch.Size([3, 4]))
    resolve_method(_NoDim).check_target("fc.weight", torch.Size([3, 4]))  # fine for one event, as in torch


def test_custom_structured_method_without_dim_prunes_once() -> None:
    """torch reads a structured method's `dim` only to prune a tensor again; so do the masks."""
    weight = torch.randn(4, 3)
    method = resolve_method(_NoDim)
    first = method.masks([weight], [_ones(weight)], 0.5, scope="layer")[0]
    assert torch.equal(first, _ones(weight))  # `compute_mask` returns the default mask
    partly = _ones(weight)
    partly[0] = False
    with pytest.raises(ValueError, match="`method=_NoDim` is structured: pruning a tensor again.*got None"):
        method.masks([weight], [partly], 0.5, scope="layer")
    resolve_method(prune.L1Unstructured).check_target("fc.bias", torch.Size([3]))  # unstructured: any shape


def test_structured_checks_targets() -> None:
    method = resolve_method("ln_structured", dim=2)
    with pytest.raises(ValueError, match=r"`dim` in \[-2, 1\].*'fc.weight'"):
        method.check_target("fc.weight", torch.Size([3, 4]))
    with pytest.raises(ValueError, match="at least 2 dimensions.*'fc.bias'"):
        method.check_target("fc.bias", torch.Size([3]))


def test_global_structured_normalises_the_count_of_nonzeros_by_the_slice_size() -> None:
    """``norm=0`` counts a slice's nonzero entries; across layers it is compared as the fraction nonzero."""
    small = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # rows: 1/2 and 2/2 nonzero
    large = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])  # rows: 3/4 and 1/4 nonzero
    method = resolve_method("ln_structured", dim=0, norm=0)
    masks = method.masks([small, large], [_ones(small), _ones(large)], 0.5, scope="global")
    assert [m.all(dim=1).tolist() for m in masks] == [[False, True], [True, False]]


def test_frobenius_norm_is_the_slices_2_norm_as_in_torch() -> None:
    """torch takes ``n="fro"`` for a matrix (its matrix norm refuses more dimensions); here it is the 2-norm."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 8)
    weight = layer.weight.detach().clone()
    prune.ln_structured(layer, "weight", 0.5, n="fro", dim=0)
    ours = resolve_method("ln_structured", dim=0, norm="fro").masks([weight], [_ones(weight)], 0.5, scope="layer")[0]
    assert torch.equal(ours, layer.weight_mask.bool())
