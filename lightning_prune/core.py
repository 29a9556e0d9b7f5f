"""Pruning events on resolved targets: compute masks, commit them, report, make permanent.

The Lightning-free core of the package: :class:`~lightning_prune.PruningCallback` calls these
functions, and so can a plain PyTorch loop.

Example:
    >>> import torch
    >>> from lightning_prune.methods import resolve_method
    >>> from lightning_prune.targets import resolve_targets
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    >>> targets = resolve_targets(model)
    >>> masks = compute_masks(targets, resolve_method("l1_unstructured"), 0.5, scope="global")
    >>> commit_masks(targets, masks)
    >>> stats = sparsity_stats(targets, resolve_method("l1_unstructured"))
    >>> stats.overall, stats.per_target["0.weight"].total
    (0.5, 64)
    >>> make_permanent(targets)
    >>> sorted(model.state_dict())
    ['0.bias', '0.weight', '1.bias', '1.weight']
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_prune import reparam
from lightning_prune.methods import PruningMethod, Scope
from lightning_prune.targets import Target

__all__ = [
    "Counts",
    "SparsityStats",
    "all_true",
    "commit_masks",
    "compute_masks",
    "current_masks",
    "make_permanent",
    "sparsity_stats",
]


def current_masks(targets: Sequence[Target], held: Sequence[Tensor | None] | None = None) -> list[Tensor]:
    """Each target's bool mask (``held``, default its own); all ``True`` where there is none.

    An all-``True`` mask is one ``True`` expanded to the target's shape: it takes no memory (a
    first event over 50M parameters would otherwise allocate 50 MB to read them), it reads like
    any mask, and writing into it raises; :func:`commit_masks` stores a copy.
    """
    held = [t.mask for t in targets] if held is None else held
    return [all_true(t.parameter) if m is None else m for t, m in zip(targets, held)]


def all_true(like: Tensor) -> Tensor:
    """A read-only all-``True`` bool mask shaped like ``like``, on its device, that takes no memory.

    Example:
        >>> mask = all_true(torch.empty(2, 3))
        >>> mask.shape, bool(mask.all()), mask.stride()
        (torch.Size([2, 3]), True, (0, 0))
    """
    return torch.ones((), dtype=torch.bool, device=like.device).expand(like.shape)


@torch.no_grad()
def compute_masks(
    targets: Sequence[Target],
    method: PruningMethod,
    sparsity: float,
    *,
    scope: Scope,
    generator: torch.Generator | None = None,
    masks: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """New masks that bring ``targets`` to ``sparsity`` (each, or together); the model is untouched.

    Scores come from the effective weights (``orig * mask``), as ``torch.nn.utils.prune`` reads
    ``module.<name>`` when it prunes a tensor again. ``masks`` are the current masks (default:
    the targets' own, see :func:`current_masks`).
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"Expected `scope` to be 'layer' or 'global', got {scope!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity <= 1:
        raise ValueError(f"Expected `sparsity` to be a real number in [0, 1], got {sparsity!r}")
    method.check_scope(scope)
    for target in targets:
        method.check_target(target.qualname, target.parameter.shape)
    if masks is None:
        masks = current_masks(targets)
    _check_count(targets, masks)
    weights = [t.parameter.detach() for t in targets]
    return method.masks(weights, masks, sparsity, scope=scope, generator=generator)


@torch.no_grad()
def commit_masks(
    targets: Sequence[Target], masks: Sequence[Tensor], *, replace: bool = False, copy: bool = True
) -> None:
    """Write ``masks`` into every holder of every target, reparametrizing where needed.

    They are combined with the masks the holders have, unless ``replace`` (restoring saved masks).
    A target reparametrized here gets a copy of its mask as the buffer, one for all holders of a
    tied tensor; ``copy=False`` hands the mask over instead (the caller writes to it no more).
    Every target and mask is checked before any changes.
    """
    _check_count(targets, masks)
    for target, mask in zip(targets, masks):
        for module, name in target.holders:
            reparam.check(module, name, mask)
    for target, mask in zip(targets, masks):
        new = copy and any(reparam.find_hook(module, name) is None for module, name in target.holders)
        mask = mask.to(target.parameter.device, torch.bool, copy=new).contiguous()  # not an expanded view
        for module, name in target.holders:
            reparam.apply(module, name, mask, replace=replace, copy=False)


def _check_count(targets: Sequence[Target], masks: Sequence[Tensor]) -> None:
    if len(masks) != len(targets):
        raise ValueError(f"Expected one mask per target ({len(targets)}), got {len(masks)} masks")


def make_permanent(targets: Sequence[Target]) -> None:
    """Remove every reparametrization: plain parameters with zeros where pruned."""
    for target in targets:
        for module, name in target.holders:
            if reparam.find_hook(module, name) is not None:
                reparam.remove(module, name)


@dataclass(frozen=True)
class Counts:
    """Pruned and total units (entries, or slices for structured methods) of one tensor."""

    pruned: int
    total: int

    @property
    def sparsity(self) -> float:
        return self.pruned / self.total if self.total else 0.0


@dataclass(frozen=True)
class SparsityStats:
    """Per-target counts and the overall fraction, in the method's units."""

    per_target: dict[str, Counts]

    @property
    def overall(self) -> float:
        total = sum(c.total for c in self.per_target.values())
        return sum(c.pruned for c in self.per_target.values()) / total if total else 0.0


def sparsity_stats(
    targets: Sequence[Target], method: PruningMethod, masks: Sequence[Tensor] | None = None
) -> SparsityStats:
    """Counts from ``masks`` (default: the targets' current masks)."""
    masks = current_masks(targets) if masks is None else masks
    return SparsityStats({t.qualname: Counts(*method.units(m)) for t, m in zip(targets, masks)})
