"""Lottery-ticket rewinding: snapshot and restore of module, optimizer and LR-scheduler state.

A :class:`Snapshot` holds a copy of every parameter and buffer of a module (masks excluded,
pruned tensors under their plain names), and of the state of every optimizer and LR scheduler.
:meth:`Snapshot.restore` copies the values back in place, so optimizers keep their parameter
references; the caller re-applies the masks. It costs one extra copy of the model and of the
optimizer state, on the device the tensors live on.

Example:
    >>> import torch
    >>> layer = torch.nn.Linear(2, 2)
    >>> opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    >>> snap = Snapshot.take(layer, [opt], [])
    >>> with torch.no_grad():
    ...     _ = layer.weight.add_(1.0)
    >>> snap.restore(layer, [opt], [])
    >>> torch.equal(layer.weight, snap.tensors["weight"])
    True
"""

from __future__ import annotations

import copy
import hashlib
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn

from lightning_prune import reparam
from lightning_prune.rng import seeded

__all__ = ["Rewind", "Snapshot", "logical_tensors", "reinit_seed", "reinitialize", "uncovered_by_reset"]


@dataclass
class Rewind:
    """Rewind to the start of training epoch ``epoch`` after every pruning event that changed a mask.

    Args:
        epoch: the epoch whose start is snapshotted (``0``: the initialisation, before any step).
        reinit: the random-reinitialisation control: instead of restoring the surviving
            weights, re-sample them with each module's ``reset_parameters`` (see
            :func:`reinitialize`); every tensor that is not a target (biases, normalisation
            layers, a backbone left unpruned), the optimizer and LR-scheduler state are still
            restored.

    Example:
        >>> Rewind(epoch=1)
        Rewind(epoch=1, reinit=False)
    """

    epoch: int = 0
    reinit: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, numbers.Integral) or self.epoch < 0:
            raise ValueError(f"Expected `Rewind.epoch` to be an int >= 0, got {self.epoch!r}")
        self.epoch = int(self.epoch)
        if not isinstance(self.reinit, bool):
            raise ValueError(f"Expected `Rewind.reinit` to be a bool, got {self.reinit!r}")


def logical_tensors(module: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer by qualified name, pruned tensors as ``<name>`` (their ``_orig``), masks left out."""
    out: dict[str, Tensor] = {}
    for prefix, sub in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        pruned = {
            n[: -len("_mask")] for n in sub._buffers if n.endswith("_mask") and n[:-5] + "_orig" in sub._parameters
        }
        for name, param in sub._parameters.items():
            if param is not None:
                plain = name[: -len("_orig")] if name.endswith("_orig") and name[:-5] in pruned else name
                out.setdefault(dot + plain, param)
        for name, buf in sub._buffers.items():
            if buf is not None and not (name.endswith("_mask") and name[:-5] in pruned):
                out.setdefault(dot + name, buf)
    return out


@dataclass
class Snapshot:
    """Copies of module tensors and of optimizer and LR-scheduler states."""

    tensors: dict[str, Tensor]
    optimizers: list[dict[str, Any]]
    schedulers: list[dict[str, Any]]
    #: the optimizers' and schedulers' classes, by import path (``None``: not recorded, an older snapshot)
    classes: tuple[list[str], list[str]] | None = None

    @classmethod
    @torch.no_grad()
    def take(cls, module: nn.Module, optimizers: Sequence[Any], schedulers: Sequence[Any]) -> Snapshot:
        tensors = {k: v.detach().clone() for k, v in logical_tensors(module).items()}
        return cls(tensors, *_states(optimizers, schedulers))

    def retake_replaced(self, optimizers: Sequence[Any], schedulers: Sequence[Any]) -> Snapshot:
        """The snapshot with the states of ``optimizers`` and ``schedulers`` taken anew if any was replaced since
        (another class or another number of them) or an optimizer has other parameter groups (more of them, or
        of other sizes: ``BackboneFinetuning`` adds one); itself otherwise."""
        if (
            self.classes is not None
            and _classes(optimizers, schedulers) == self.classes
            and [_group_sizes(state) for state in self.optimizers] == [_group_sizes(o) for o in optimizers]
        ):
            return self
        return Snapshot(self.tensors, *_states(optimizers, schedulers))

    def check(self, module: nn.Module, optimizers: Sequence[Any], schedulers: Sequence[Any] | None) -> None:
        """Raise a ``RuntimeError`` if :meth:`restore` could not restore the snapshot into these objects.

        The module must hold the same tensors (names and shapes), and there must be as many optimizers
        and schedulers, of the same classes, each optimizer with the same parameter groups (as many, of
        the same sizes). ``schedulers=None`` leaves them out of the check. Nothing is written.
        """
        self._checked(module, optimizers, schedulers)

    def _checked(
        self, module: nn.Module, optimizers: Sequence[Any], schedulers: Sequence[Any] | None
    ) -> dict[str, Tensor]:
        """:meth:`check`, returning the module's tensors by name."""
        live = logical_tensors(module)
        if live.keys() != self.tensors.keys():
            missing, extra = sorted(self.tensors.keys() - live.keys()), sorted(live.keys() - self.tensors.keys())
            raise RuntimeError(
                f"Cannot rewind: the module's tensors changed since the snapshot (missing {missing}, new {extra})"
            )
        resized = [
            f"{name}: {tuple(self.tensors[name].shape)} -> {tuple(t.shape)}"
            for name, t in live.items()
            if t.shape != self.tensors[name].shape
        ]
        if resized:
            raise RuntimeError(f"Cannot rewind: tensors changed shape since the snapshot ({', '.join(resized)})")
        self._check_states(optimizers, schedulers)
        return live

    def _check_states(self, optimizers: Sequence[Any], schedulers: Sequence[Any] | None) -> None:
        """The part of :meth:`check` about the optimizers and schedulers."""
        live_schedulers = len(self.schedulers) if schedulers is None else len(schedulers)
        if len(optimizers) != len(self.optimizers) or live_schedulers != len(self.schedulers):
            raise RuntimeError(
                f"Cannot rewind: the snapshot holds {len(self.optimizers)} optimizers and {len(self.schedulers)} "
                f"schedulers, the trainer has {len(optimizers)}"
                + ("" if schedulers is None else f" and {len(schedulers)}")
            )
        if self.classes is not None:
            kinds = zip(("optimizer", "scheduler"), self.classes, _classes(optimizers, schedulers or ()))
            for kind, before, after in list(kinds)[: 1 if schedulers is None else 2]:
                for i, (was, is_) in enumerate(zip(before, after)):
                    if was != is_:
                        raise RuntimeError(
                            f"Cannot rewind: {kind} {i} is a {is_} now, the snapshot's was a {was} (was it replaced "
                            f"after the snapshot, as StochasticWeightAveraging replaces the LR scheduler at its "
                            f"`swa_epoch_start`? Start that at or before the rewind epoch)"
                        )
        for i, (opt, state) in enumerate(zip(optimizers, self.optimizers)):
            saved, now = _group_sizes(state), _group_sizes(opt)
            if saved != now:
                raise RuntimeError(
                    f"Cannot rewind: optimizer {i} has parameter groups of sizes {now}, the snapshot's had {saved} "
                    f"(were parameters added to it after the snapshot, as BackboneFinetuning does?)"
                )

    @torch.no_grad()
    def restore(
        self, module: nn.Module, optimizers: Sequence[Any], schedulers: Sequence[Any], *, keep: Sequence[Tensor] = ()
    ) -> None:
        """Copy the snapshot back into ``module``, ``optimizers`` and ``schedulers`` (after :meth:`check`); the
        module's tensors in ``keep`` keep their values."""
        live = self._checked(module, optimizers, schedulers)
        kept = {id(t) for t in keep}
        for name, tensor in live.items():
            if id(tensor) not in kept:
                tensor.copy_(self.tensors[name])
        self._load_states(optimizers, schedulers)

    def restore_states(self, optimizers: Sequence[Any], schedulers: Sequence[Any]) -> None:
        """Copy the snapshot's optimizer and scheduler states back, not the module's tensors; a ``RuntimeError``
        (before anything is written) where they do not fit, as :meth:`check` says.

        Example:
            >>> import torch
            >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
            >>> snap = Snapshot.take(torch.nn.Identity(), [opt], [])
            >>> opt.param_groups[0]["lr"] = 0.05
            >>> snap.restore_states([opt], [])
            >>> opt.param_groups[0]["lr"]
            0.1
        """
        self._check_states(optimizers, schedulers)
        self._load_states(optimizers, schedulers)

    def states_equal(self, optimizers: Sequence[Any], schedulers: Sequence[Any]) -> bool:
        """Whether the optimizers and schedulers still hold the snapshot's states: the schedulers' states, and
        for the snapshot's parameter groups the hyperparameters (learning rates and the like) and the state of
        every parameter (momentum, step counts). Groups added since are left out; ``False`` where it cannot be
        told (tensors on another device, say).

        Example:
            >>> import torch
            >>> layer = torch.nn.Linear(2, 2)
            >>> opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
            >>> snap = Snapshot.take(layer, [opt], [])
            >>> snap.states_equal([opt], [])
            True
            >>> layer(torch.ones(1, 2)).sum().backward(); opt.step()
            >>> snap.states_equal([opt], [])
            False
        """
        if len(optimizers) != len(self.optimizers) or len(schedulers) != len(self.schedulers):
            return False
        try:
            for opt, saved in zip(optimizers, self.optimizers):
                live = opt.state_dict()
                groups = saved["param_groups"]
                if len(live["param_groups"]) < len(groups):
                    return False
                for group, saved_group in zip(live["param_groups"], groups):
                    hyper, saved_hyper = ({k: v for k, v in g.items() if k != "params"} for g in (group, saved_group))
                    if not _same(hyper, saved_hyper):
                        return False
                indices = {i for g in groups for i in g["params"]}  # the snapshot's parameters' places
                if not _same({i: v for i, v in live["state"].items() if i in indices}, saved["state"]):
                    return False
            return all(_same(s.state_dict(), state) for s, state in zip(schedulers, self.schedulers))
        except (RuntimeError, TypeError, ValueError):  # tensors on other devices, values of no single truth
            return False

    def _load_states(self, optimizers: Sequence[Any], schedulers: Sequence[Any]) -> None:
        for opt, state in zip(optimizers, self.optimizers):
            opt.load_state_dict(copy.deepcopy(state))
        for sched, state in zip(schedulers, self.schedulers):
            sched.load_state_dict(copy.deepcopy(state))

    def state_dict(self) -> dict[str, Any]:
        state = {"tensors": self.tensors, "optimizers": self.optimizers, "schedulers": self.schedulers}
        return state if self.classes is None else {**state, "classes": [list(c) for c in self.classes]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Snapshot:
        classes = state.get("classes")  # absent from the snapshots of earlier versions
        return cls(
            dict(state["tensors"]),
            list(state["optimizers"]),
            list(state["schedulers"]),
            None if classes is None else (list(classes[0]), list(classes[1])),
        )

    def to(self, device: torch.device) -> Snapshot:
        """The snapshot with its module tensors on ``device``.

        Optimizer and scheduler states follow only to the CPU: on restore ``load_state_dict`` puts
        them beside the parameters, except what must stay on the CPU (Adam's ``step``, say).
        """
        move = partial(apply_to_collection, dtype=Tensor, function=lambda t: t.to(device))
        if device.type != "cpu":
            return Snapshot(move(self.tensors), self.optimizers, self.schedulers, self.classes)
        return Snapshot(move(self.tensors), move(self.optimizers), move(self.schedulers), self.classes)


def _states(
    optimizers: Sequence[Any], schedulers: Sequence[Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], tuple[list[str], list[str]]]:
    """Copies of the optimizers' and schedulers' states, and their classes: a :class:`Snapshot`'s last fields."""
    return (
        [copy.deepcopy(o.state_dict()) for o in optimizers],
        [copy.deepcopy(s.state_dict()) for s in schedulers],
        _classes(optimizers, schedulers),
    )


def _same(a: Any, b: Any) -> bool:
    """Nested dicts, lists and tensors equal value for value (tensors by ``torch.equal``)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def _group_sizes(optimizer: Any) -> list[int]:
    """The sizes of the parameter groups of an optimizer, or of its saved ``state_dict``."""
    groups = optimizer["param_groups"] if isinstance(optimizer, dict) else optimizer.param_groups
    return [len(g["params"]) for g in groups]


def _classes(optimizers: Sequence[Any], schedulers: Sequence[Any]) -> tuple[list[str], list[str]]:
    def path(obj: Any) -> str:
        return f"{type(obj).__module__}.{type(obj).__qualname__}"

    return [path(o) for o in optimizers], [path(s) for s in schedulers]


@contextmanager
def _plain(module: nn.Module) -> Iterator[None]:
    """Inside, every tensor of ``module`` pruned by a ``MaskHook`` is a plain parameter again, its hook idle (a
    reset may run a forward pass)."""
    names = [n for n in list(module._parameters) if n.endswith("_orig") and reparam.is_reparametrized(module, n[:-5])]
    hooks = module._forward_pre_hooks
    idle = {k: h for k, h in hooks.items() if isinstance(h, reparam.MaskHook) and h._tensor_name + "_orig" in names}
    for orig_name in names:
        name = orig_name[: -len("_orig")]
        module.__dict__.pop(name, None)
        reparam.rename_parameter(module, orig_name, name)
    hooks.update(dict.fromkeys(idle, _idle_hook))  # in their places: the order of the other hooks stays
    try:
        yield
    finally:
        hooks.update(idle)
        for orig_name in names:
            name = orig_name[: -len("_orig")]
            reparam.rename_parameter(module, name, orig_name)
            reparam.refresh(module, name)


def _idle_hook(module: nn.Module, inputs: Any) -> None:
    return None


def _reset(module: nn.Module) -> Callable[[], None] | None:
    """``module.reset_parameters``, or the private ``_reset_parameters`` that ``nn.MultiheadAttention`` and
    ``nn.Transformer`` run at construction instead; ``None`` if it has neither."""
    for name in ("reset_parameters", "_reset_parameters"):
        reset = getattr(module, name, None)
        if callable(reset):
            return reset
    return None


def reinitialize(module: nn.Module, seed: int) -> None:
    """Re-sample every submodule's parameters with its ``reset_parameters``, under ``seed``.

    Submodules are reset before the modules that hold them, as construction initialises them (a
    ``nn.Transformer`` re-draws its layers' weights after they drew their own), and a module's reset
    that writes a submodule's pruned tensor (``nn.MultiheadAttention`` zeroes ``out_proj.bias``)
    writes the tensor itself. The global RNG state is left as it was. Masks are kept.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> before = layer.weight.detach().clone()
        >>> reinitialize(layer, seed=0)
        >>> torch.equal(before, layer.weight)
        False
    """
    # every module plain for the whole pass: a module's reset may write its submodules' tensors
    with seeded(seed, module.parameters()), ExitStack() as plain:
        for sub in module.modules():
            plain.enter_context(_plain(sub))
        for sub in reversed(list(module.modules())):
            reset = _reset(sub)
            if reset is not None:
                reset()


def uncovered_by_reset(module: nn.Module, names: Sequence[str]) -> list[str]:
    """Which of the qualified parameter ``names`` no ``reset_parameters`` of their module, or of a module
    above it, could re-sample: :func:`reinitialize` would leave them as they are.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> model.scale = torch.nn.Parameter(torch.ones(2))
        >>> uncovered_by_reset(model, ["0.weight", "scale"])
        ['scale']
    """
    owners = [prefix for prefix, sub in module.named_modules() if _reset(sub) is not None]
    return [n for n in names if not any(o == "" or n.startswith(o + ".") for o in owners)]


def reinit_seed(seed: int, rewinds: int) -> int:
    """The seed of :func:`reinitialize` for the control's ``rewinds``-th rewind under the callback's ``seed``.

    Hashed, so that it is no seed a run would pick to build its model: ``seed + round`` made a round of
    the run seeded ``s`` draw the very initialisation of the run seeded ``s + round``.

    Example:
        >>> reinit_seed(0, 1) != reinit_seed(1, 0)
        True
    """
    # `seed` modulo 2**64, as torch maps a negative seed: -1 re-samples as 2**64 - 1 does
    digest = hashlib.blake2b(f"lightning_prune.reinit:{seed % 2**64}:{rewinds}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
