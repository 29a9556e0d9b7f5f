"""Masks kept beside plain parameters and applied in place after every optimizer step.

The opt-in alternative to the reparametrization (``PruningCallback(masking="in_place")``): the
weights stay ordinary ``nn.Parameter`` objects, pruned entries are zeroed when a mask is
committed and again right after each ``optimizer.step()`` (one fused ``torch._foreach_mul_``
over all targets), so every forward pass sees them zero. Nothing is recomputed in the forward
pass and no ``weight_orig`` copy exists; the price is that momentum or weight decay may move a
pruned entry during the step, before it is zeroed again.

Example:
    >>> import torch
    >>> from lightning_prune.targets import resolve_targets
    >>> layer = torch.nn.Linear(2, 2, bias=False)
    >>> masks = InPlaceMasks()
    >>> masks.commit(resolve_targets(layer), [torch.tensor([[True, False], [False, True]])])
    >>> opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    >>> masks.attach([opt])
    >>> layer(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> int((layer.weight == 0).sum())
    2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_prune.targets import Target

__all__ = ["InPlaceMasks"]


class InPlaceMasks:
    """Bool masks by qualified name, their float factors, and the optimizer hooks that apply them."""

    def __init__(self) -> None:
        self.masks: dict[str, Tensor] = {}
        self._weights: list[Tensor] = []
        self._factors: list[Tensor] = []
        self._handles: list[Any] = []

    def current(self, targets: Sequence[Target]) -> list[Tensor | None]:
        """Each target's mask, ``None`` where it has none yet."""
        return [self.masks.get(t.qualname) for t in targets]

    @torch.no_grad()
    def commit(self, targets: Sequence[Target], masks: Sequence[Tensor]) -> None:
        """Store ``masks`` (combined with the current ones) and zero the pruned entries now."""
        for target, mask in zip(targets, masks):
            param = target.parameter
            new = mask.to(param.device, torch.bool)
            old = self.masks.get(target.qualname)
            self.masks[target.qualname] = new if old is None else old & new
        by_name = {t.qualname: t.parameter for t in targets}
        self._weights = [by_name[name] for name in self.masks if name in by_name]
        self._factors = [self.masks[name].to(by_name[name].dtype) for name in self.masks if name in by_name]
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned entry (a fused multiply by the cached float masks)."""
        if self._weights:
            torch._foreach_mul_(self._weights, self._factors)

    def attach(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Apply the masks after every ``step()`` of ``optimizers``."""
        self.detach()
        self._handles = [opt.register_step_post_hook(self._after_step) for opt in optimizers]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.apply()

    def to(self, device: torch.device) -> None:
        """Move the masks and their float factors to ``device``."""
        self.masks = {name: mask.to(device) for name, mask in self.masks.items()}
        self._factors = [factor.to(device) for factor in self._factors]

    def clear(self) -> None:
        self.detach()
        self.masks, self._weights, self._factors = {}, [], []

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": []}
