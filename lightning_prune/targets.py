"""Which tensors to prune: fnmatch patterns over qualified parameter names.

Names are the ones ``model.named_parameters()`` shows for an unpruned model (``"conv1.weight"``),
also while a tensor is reparametrized (then its parameter is ``conv1.weight_orig``). A tied
parameter (one ``nn.Parameter`` held by several modules) is one target with several holders:
it is pruned once and every holder sees the same mask.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> [t.qualname for t in resolve_targets(model)]
    ['0.weight', '2.weight']
    >>> [t.qualname for t in resolve_targets(model, targets=["*.bias"])]
    ['0.bias', '2.bias']
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_LAYERS", "Target", "computed_weights", "resolve_targets"]

DEFAULT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_WILDCARDS = set("*?[")


@dataclass
class Target:
    """One prunable tensor: its qualified name and every ``(module, name)`` that holds it."""

    qualname: str
    holders: list[tuple[nn.Module, str]] = field(default_factory=list)

    @property
    def module(self) -> nn.Module:
        return self.holders[0][0]

    @property
    def name(self) -> str:
        return self.holders[0][1]

    @property
    def parameter(self) -> nn.Parameter:
        """The ``nn.Parameter`` itself (``<name>_orig`` while reparametrized)."""
        module, name = self.holders[0]
        param = module._parameters.get(name + "_orig", module._parameters.get(name))
        assert isinstance(param, nn.Parameter)
        return param

    @property
    def mask(self) -> Tensor | None:
        """The current bool mask, or ``None`` while the tensor is not reparametrized.

        A float mask (``torch.nn.utils.prune``'s, until the first commit adopts it) is read as ``mask != 0``.
        Holders of a tied tensor share one mask, but torch's pruning of one holder alone gives that one its
        own: the entries pruned in any holder's count as pruned.
        """
        found: list[Tensor] = []
        for module, name in self.holders:
            mask = module._buffers.get(name + "_mask")
            if mask is not None and all(mask is not other for other in found):
                found.append(mask if mask.dtype == torch.bool else mask != 0)
        if not found:
            return None
        combined = found[0]
        for other in found[1:]:
            combined = combined & other
        return combined


def _logical_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, object]]:
    """``(qualname, module, name, parameter)`` for every parameter slot, pruned ones under their plain name."""
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for name, param in module._parameters.items():
            if name.endswith("_orig") and name[: -len("_orig")] + "_mask" in module._buffers:
                name = name[: -len("_orig")]
            yield prefix + name, module, name, param


def _is_float_parameter(param: object) -> bool:
    return (
        isinstance(param, nn.Parameter)
        and not isinstance(param, nn.parameter.UninitializedParameter)
        and param.is_floating_point()
    )


def computed_weights(model: nn.Module) -> dict[str, list[str]]:
    """The default layers' ``weight`` s that are no parameter of their own, which the default targets leave out.

    A weight that ``torch.nn.utils.parametrize`` (``parametrizations.weight_norm``,
    ``spectral_norm``) or the older ``weight_norm``/``spectral_norm`` hooks compute from other
    parameters; each maps to the floating-point parameters under its layer (``bias`` aside).

    Example:
        >>> from torch.nn.utils.parametrizations import weight_norm
        >>> computed_weights(torch.nn.Sequential(weight_norm(torch.nn.Linear(2, 2)), torch.nn.Linear(2, 2)))
        {'0.weight': ['0.parametrizations.weight.original0', '0.parametrizations.weight.original1']}
    """
    computed: dict[str, list[str]] = {}
    for module_name, module in model.named_modules():
        pruned = "weight_orig" in module._parameters and "weight_mask" in module._buffers
        if not isinstance(module, DEFAULT_LAYERS) or "weight" in module._parameters or pruned:
            continue
        prefix = f"{module_name}." if module_name else ""
        held = [prefix + n for n, p in module.named_parameters() if n != "bias" and _is_float_parameter(p)]
        if held:
            computed[prefix + "weight"] = held
    return computed


def resolve_targets(
    model: nn.Module,
    targets: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> list[Target]:
    """Resolve patterns to :class:`Target` objects, in the order of ``model.named_parameters()``.

    Args:
        model: the model to search.
        targets: fnmatch patterns over qualified parameter names; ``None`` selects the
            ``weight`` of every ``Linear`` and ``Conv1d/2d/3d``. Only floating-point
            ``nn.Parameter`` objects are selected.
        exclude: patterns taken out of the selection.

    Raises:
        ValueError: a pattern matches no parameter (the message lists the candidates), a
            pattern without wildcards names a parameter that is not floating point, a selected
            parameter is not initialized yet (a lazy module), nothing is left to prune, or
            ``exclude`` takes out one name of a tied parameter that stays selected under another.
    """
    for arg, patterns in (("targets", targets or ()), ("exclude", exclude)):
        if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
            raise ValueError(f"Expected `{arg}` to be a list of name patterns, got {patterns!r}")

    slots = list(_logical_parameters(model))
    lazy = {q for q, _, _, p in slots if isinstance(p, nn.parameter.UninitializedParameter)}
    candidates = [q for q, _, _, p in slots if _is_float_parameter(p) or q in lazy]
    all_names = [q for q, *_ in slots]
    if targets is None:
        wanted = {
            f"{module_name}.weight" if module_name else "weight"
            for module_name, module in model.named_modules()
            if isinstance(module, DEFAULT_LAYERS)
        }
        selected = [q for q in candidates if q in wanted]
    else:
        for pattern in targets:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in all_names):
                raise ValueError(f"`targets` pattern {pattern!r} matches no parameter; candidates are {candidates}")
            if not _WILDCARDS & set(pattern) and pattern not in candidates:
                raise ValueError(
                    f"`targets` names {pattern!r}, which is not a floating-point nn.Parameter "
                    f"(only those can be pruned); candidates are {candidates}"
                )
        selected = [q for q in candidates if any(fnmatch.fnmatchcase(q, p) for p in targets)]
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in all_names):
            raise ValueError(f"`exclude` pattern {pattern!r} matches no parameter; candidates are {candidates}")
    selected = [q for q in selected if not any(fnmatch.fnmatchcase(q, p) for p in exclude)]
    uninitialized = [q for q in selected if q in lazy]
    if uninitialized:
        raise ValueError(
            f"Targets {uninitialized} are not initialized yet (lazy modules such as nn.LazyLinear get their "
            f"shapes from the first forward pass): run one forward pass before `fit` (in the LightningModule's "
            f"`setup`, say), give the layers their sizes, or take them out with `exclude`"
        )
    if not selected:
        raise ValueError(
            f"Nothing to prune: `targets={targets!r}` with `exclude={list(exclude)!r}` selects no "
            f"floating-point parameter of {type(model).__name__}; candidates are {candidates}"
        )

    chosen = set(selected)
    by_param: dict[int, Target] = {}
    for qualname, _, _, param in slots:
        if qualname in chosen and id(param) not in by_param:
            by_param[id(param)] = Target(qualname)
    for _, module, name, param in slots:
        target = by_param.get(id(param))
        if target is not None and not any(m is module and n == name for m, n in target.holders):
            target.holders.append((module, name))
    tied = sorted(
        {
            f"{q!r} (the same Parameter as {by_param[id(p)].qualname!r})"
            for q, _, _, p in slots
            if id(p) in by_param and q not in chosen and any(fnmatch.fnmatchcase(q, pat) for pat in exclude)
        }
    )
    if tied:
        raise ValueError(
            f"`exclude` takes out {', '.join(tied)}, but the tensor is selected under its other name: a tied "
            f"parameter is one tensor, pruned under all its names or none; exclude every name or none"
        )
    return list(by_param.values())
