"""Target resolution: defaults, patterns, exclusions, errors, tied weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_prune import reparam
from lightning_prune.targets import computed_weights, resolve_targets
from tests.tutorial import TutorialLeNet


def _names(targets) -> list[str]:
    return [t.qualname for t in targets]


def test_default_targets_are_linear_and_conv_weights() -> None:
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.Conv3d(1, 1, 1), nn.LayerNorm(4), nn.Linear(4, 2))
    assert _names(resolve_targets(model)) == ["0.weight", "2.weight", "4.weight"]


def test_weights_computed_from_other_parameters_are_named_for_the_warning() -> None:
    """A parametrized, weight-normed or spectral-normed layer's `weight` is no parameter of its own."""
    from torch.nn.utils import parametrizations, spectral_norm, weight_norm

    layers = [
        parametrizations.weight_norm(nn.Linear(2, 2)),
        parametrizations.spectral_norm(nn.Linear(2, 2)),
        weight_norm(nn.Conv1d(2, 2, 1)),
        spectral_norm(nn.Linear(2, 2)),
        nn.Linear(2, 2),
    ]
    model = nn.Sequential(*layers)
    assert _names(resolve_targets(model)) == ["4.weight"]
    assert computed_weights(model) == {
        "0.weight": ["0.parametrizations.weight.original0", "0.parametrizations.weight.original1"],
        "1.weight": ["1.parametrizations.weight.original"],
        "2.weight": ["2.weight_g", "2.weight_v"],
        "3.weight": ["3.weight_orig"],
    }
    reparam.apply(model[4], "weight")
    assert "4.weight" not in computed_weights(model), "pruned here, not computed"


def test_patterns_and_exclude() -> None:
    model = TutorialLeNet()
    assert _names(resolve_targets(model, ["fc*.weight"], exclude=["fc3.weight"])) == ["fc1.weight", "fc2.weight"]
    assert _names(resolve_targets(model, ["conv1.*"])) == ["conv1.weight", "conv1.bias"]


def test_names_stay_logical_while_pruned() -> None:
    model = TutorialLeNet()
    reparam.apply(model.fc1, "weight")
    assert _names(resolve_targets(model, ["fc1.weight"])) == ["fc1.weight"]
    assert resolve_targets(model, ["fc1.weight"])[0].parameter is model.fc1.weight_orig


@pytest.mark.parametrize(
    ("targets", "exclude", "match"),
    [
        pytest.param(
            ["fc9.weight"],
            (),
            r"`targets` pattern 'fc9.weight' matches no parameter; candidates are \['conv1.weight'",
            id="no-match",
        ),
        pytest.param(None, ["nothing*"], "`exclude` pattern 'nothing\\*' matches no parameter", id="exclude-no-match"),
        pytest.param(["fc*.weight"], ["fc*"], "Nothing to prune", id="all-excluded"),
        pytest.param("fc1.weight", (), "list of name patterns", id="bare-string"),
    ],
)
def test_bad_patterns(targets, exclude, match) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_targets(TutorialLeNet(), targets, exclude)


def test_integer_parameter_named_explicitly_is_an_error() -> None:
    model = nn.Linear(2, 2)
    model.register_parameter("steps", nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False))
    with pytest.raises(ValueError, match="'steps', which is not a floating-point nn.Parameter"):
        resolve_targets(model, ["steps"])
    assert _names(resolve_targets(model, ["*"])) == ["weight", "bias"], "wildcards skip non-float parameters"


def test_uninitialized_lazy_parameters_are_named() -> None:
    """A lazy layer's weight has no shape before its first forward: an error, never a silent skip."""
    model = nn.Sequential(nn.LazyLinear(3), nn.ReLU(), nn.Linear(3, 2))
    for targets in (None, ["0.weight"], ["*.weight"]):
        with pytest.raises(ValueError, match=r"Targets \['0\.weight'\] are not initialized yet.*forward pass"):
            resolve_targets(model, targets)
    assert _names(resolve_targets(model, exclude=["0.weight"])) == ["2.weight"]
    model(torch.ones(1, 5))
    assert _names(resolve_targets(model)) == ["0.weight", "2.weight"]


def test_model_without_targets() -> None:
    with pytest.raises(ValueError, match="Nothing to prune.*ReLU"):
        resolve_targets(nn.ReLU())


def test_tied_weights_are_one_target_with_two_holders() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    targets = resolve_targets(model)
    assert _names(targets) == ["0.weight"]
    assert [(id(m), n) for m, n in targets[0].holders] == [(id(model[0]), "weight"), (id(model[1]), "weight")]


def test_excluding_one_name_of_a_tied_weight_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    with pytest.raises(ValueError, match=r"`exclude` takes out '1.weight' \(the same Parameter as '0.weight'\)"):
        resolve_targets(model, exclude=["1.weight"])
    assert resolve_targets(model, exclude=["*.weight"], targets=["*"])[0].qualname == "0.bias"
