"""Pruning methods: from (weights, current masks, target sparsity) to new masks.

Each method turns a cumulative target ("this tensor, or these tensors together, must be
``s`` sparse") into new boolean masks. Built-in methods prune exactly ``round(s * n)``
entries (or slices) and never revive one. A subclass of
``torch.nn.utils.prune.BasePruningMethod`` is wrapped by :class:`CustomMethod`, which calls
its ``compute_mask`` the way ``torch.nn.utils.prune`` does for iterative pruning.

Example:
    >>> import torch
    >>> method = resolve_method("l1_unstructured")
    >>> w = torch.tensor([[0.1, -0.4], [0.3, -0.2]])
    >>> method.masks([w], [torch.ones(2, 2, dtype=torch.bool)], 0.5, scope="layer")[0]
    tensor([[False,  True],
            [ True, False]])
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn.utils import prune as torch_prune

from lightning_prune.masks import count_for, expand_slices, prune_smallest, random_scores, slice_alive, slice_norms
from lightning_prune.rng import seeded

__all__ = ["BUILTIN_METHODS", "CustomMethod", "PruningMethod", "resolve_method", "validate_norm"]

Scope = Literal["layer", "global"]
MethodArg = str | type[torch_prune.BasePruningMethod]


class PruningMethod:
    """A way of choosing which entries to prune. Subclasses implement :meth:`masks`."""

    name: str = ""
    structured: bool = False
    random: bool = False  # draws random numbers: :meth:`masks` takes a generator (seeded alike on every rank)
    #: which of the callback's ``dim`` and ``norm`` (torch's ``n``) it uses
    takes: frozenset[str] = frozenset()

    def masks(
        self,
        weights: Sequence[Tensor],
        masks: Sequence[Tensor],
        sparsity: float,
        *,
        scope: Scope,
        generator: torch.Generator | None = None,
    ) -> list[Tensor]:
        """New masks that make the targets ``sparsity`` sparse (per tensor, or together)."""
        raise NotImplementedError

    def check_target(self, qualname: str, shape: torch.Size) -> None:
        """Raise ``ValueError`` if this method cannot prune a tensor of ``shape``."""

    def check_scope(self, scope: Scope) -> None:
        """Raise ``ValueError`` if this method cannot prune with ``scope``."""

    def units(self, mask: Tensor) -> tuple[int, int]:
        """``(pruned, total)`` in the units this method counts: entries or slices."""
        return mask.numel() - int(torch.count_nonzero(mask).item()), mask.numel()

    def __repr__(self) -> str:
        return self.name


def _select(
    method: PruningMethod,
    scores: Callable[[], list[Tensor]],
    alive: Sequence[Tensor],
    sparsity: float,
    largest: bool = False,
) -> list[Tensor]:
    """:func:`prune_smallest` to ``sparsity`` of the units in ``alive``, by ``scores()``. A random method whose
    target is reached draws nothing, as torch's draws no numbers for an amount of 0: the draws of the tensors
    after it stay those of torch's under the same seed."""
    n_pruned = count_for(sparsity, sum(a.numel() for a in alive))
    if method.random and n_pruned <= sum(a.numel() - int(torch.count_nonzero(a).item()) for a in alive):
        return [a.clone() for a in alive]
    return prune_smallest(scores(), alive, n_pruned, largest=largest)


class _Unstructured(PruningMethod):
    def _scores(self, weights: Sequence[Tensor], masks: Sequence[Tensor], generator: torch.Generator | None):
        raise NotImplementedError

    def masks(self, weights, masks, sparsity, *, scope, generator=None):
        if scope == "global":
            return _select(self, lambda: self._scores(weights, masks, generator), masks, sparsity, self.random)
        return [
            _select(self, functools.partial(self._scores, [w], [m], generator), [m], sparsity, self.random)[0]
            for w, m in zip(weights, masks)
        ]


class L1Unstructured(_Unstructured):
    """Prune the entries of smallest magnitude (``torch.nn.utils.prune.l1_unstructured``)."""

    name = "l1_unstructured"

    def _scores(self, weights, masks, generator):
        return list(weights)


class RandomUnstructured(_Unstructured):
    """Prune entries at random (``torch.nn.utils.prune.random_unstructured``)."""

    name = "random_unstructured"
    random = True

    def _scores(self, weights, masks, generator):
        # in the weights' dtype, as torch's `rand_like(t)` over their concatenation under global scope: a
        # float64 weight draws other numbers, and makes every weight draw them
        dtype = functools.reduce(torch.promote_types, (_computable(w.dtype) for w in weights))
        return [random_scores(m, generator, dtype) for m in masks]


def _computable(dtype: torch.dtype) -> torch.dtype:
    """``dtype``, or float32 for an 8-bit float, which torch's random and arithmetic kernels refuse
    (``torch.nn.utils.prune`` cannot prune such a weight at random or by slice norms)."""
    return torch.float32 if dtype.is_floating_point and dtype.itemsize == 1 else dtype


def _check_dim(dim: int, qualname: str, shape: torch.Size) -> None:
    if not -len(shape) <= dim < len(shape):
        raise ValueError(
            f"Expected `dim` in [{-len(shape)}, {len(shape) - 1}] for target {qualname!r} "
            f"of shape {tuple(shape)}, got {dim}"
        )


class _Structured(PruningMethod):
    structured = True
    takes = frozenset({"dim"})

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def check_target(self, qualname: str, shape: torch.Size) -> None:
        if len(shape) < 2:
            raise ValueError(
                f"`method={self.name!r}` prunes slices of tensors with at least 2 dimensions, "
                f"but target {qualname!r} has shape {tuple(shape)}; exclude it or use an unstructured method"
            )
        _check_dim(self.dim, qualname, shape)

    def units(self, mask: Tensor) -> tuple[int, int]:
        if mask.numel() == 0:
            return 0, 0  # slices without entries: none to prune, none pruned
        alive = slice_alive(mask, self.dim)
        return alive.numel() - int(torch.count_nonzero(alive).item()), alive.numel()

    def _scores(self, weights, alive, generator, *, normalize: bool) -> list[Tensor]:
        raise NotImplementedError

    def masks(self, weights, masks, sparsity, *, scope, generator=None):
        # A tensor without entries has slices without entries: they would read as pruned, and count so.
        ranked = [i for i, m in enumerate(masks) if m.numel()]
        alive = [slice_alive(masks[i], self.dim) for i in ranked]
        effective = [weights[i].to(_computable(weights[i].dtype)) * masks[i] for i in ranked]
        if scope == "global":
            keep = _select(self, lambda: self._scores(effective, alive, generator, normalize=True), alive, sparsity)
        else:
            keep = [
                _select(self, functools.partial(self._scores, [w], [a], generator, normalize=False), [a], sparsity)[0]
                for w, a in zip(effective, alive)
            ]
        kept = dict(zip(ranked, keep))
        return [expand_slices(m, kept[i], self.dim) if i in kept else m.clone() for i, m in enumerate(masks)]


class LnStructured(_Structured):
    """Prune the slices along ``dim`` of smallest Ln norm (``torch.nn.utils.prune.ln_structured``).

    Under ``scope="global"`` slices of different layers are ranked by their size-normalised
    norm ``||slice||_n / m ** (1/n)`` (``m`` entries per slice), see
    :func:`lightning_prune.masks.slice_norms`.
    """

    name = "ln_structured"
    takes = frozenset({"dim", "n"})

    def __init__(self, dim: int, norm: float) -> None:
        super().__init__(dim)
        self.norm = norm

    def _scores(self, weights, alive, generator, *, normalize):
        return [slice_norms(w, self.norm, self.dim, normalize=normalize) for w in weights]


class RandomStructured(_Structured):
    """Prune slices along ``dim`` at random (``torch.nn.utils.prune.random_structured``)."""

    name = "random_structured"
    random = True

    def _scores(self, weights, alive, generator, *, normalize):
        return [random_scores(a, generator) for a in alive]


class CustomMethod(PruningMethod):
    """Wraps a ``torch.nn.utils.prune.BasePruningMethod`` subclass.

    Its ``compute_mask`` sees what ``torch.nn.utils.prune`` would show it when pruning
    iteratively: for ``PRUNING_TYPE`` ``"unstructured"`` the surviving entries as a flat
    tensor, for ``"structured"`` the surviving slices along the method's ``dim``, for
    ``"global"`` the whole tensor with the current mask. It is constructed with
    ``amount=`` the fraction of what survives that reaches the target, if its ``__init__``
    takes an ``amount``; which entries it zeroes is its own decision (a mask never regrows).
    Given a ``generator``, :meth:`masks` runs ``compute_mask`` with the global RNG seeded from it
    (and restored afterwards), so a method that draws random numbers draws the same ones on
    every DDP rank.
    """

    random = True  # it may draw from the global RNG

    def __init__(self, cls: type[torch_prune.BasePruningMethod], dim: int | None = None, norm: object = None) -> None:
        self.cls = cls
        self.name = f"{cls.__module__}.{cls.__qualname__}"
        parameters = inspect.signature(cls.__init__).parameters
        unfillable = [
            name
            for name, p in list(parameters.items())[1:]
            if name not in ("amount", "dim", "n")
            and p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if unfillable:
            raise TypeError(
                f"`method={cls.__name__}` needs the constructor arguments {unfillable}, which PruningCallback cannot "
                f"pass (it passes `amount`, `dim` and `n` only); give them defaults"
            )
        self.takes_amount = "amount" in parameters
        self.takes = frozenset(name for name in ("dim", "n") if name in parameters)
        # `dim` and `n` as given, else the class's own defaults; the built-ins' 0 and 2 where it has none
        self.kwargs: dict[str, object] = {}
        for name, value, fallback in (("dim", dim, 0), ("n", norm, 2)):
            if name in self.takes and (value is not None or parameters[name].default is inspect.Parameter.empty):
                self.kwargs[name] = fallback if value is None else value
        self._probed: tuple[object] | None = None  # (its instances' `dim`,), once asked
        self.pruning_type = getattr(cls, "PRUNING_TYPE", "unstructured")
        if self.pruning_type not in ("unstructured", "structured", "global"):
            raise ValueError(
                f"Expected `method` {self.name} to have PRUNING_TYPE 'unstructured', 'structured' or 'global', "
                f"got {self.pruning_type!r}"
            )

    def check_target(self, qualname: str, shape: torch.Size) -> None:
        """A structured method's ``dim``, if its instances have one, must fit ``shape``.

        Without one it prunes a tensor once, as with torch; :meth:`masks` asks for it when it
        prunes a tensor again (torch's iterative pruning slices by it).
        """
        if self.pruning_type != "structured":
            return
        if len(shape) == 0:
            raise ValueError(
                f"`method={self.cls.__name__}` is structured and prunes slices, but target {qualname!r} is a scalar"
            )
        dim = self.instance_dim()
        if dim is not None:
            _check_dim(self._dim(dim), qualname, shape)

    def instance_dim(self) -> object:
        """Its instances' ``dim`` attribute (``None`` if they have none), asked once: ``__init__`` may do work."""
        if self._probed is None:
            self._probed = (getattr(self._instance(0.5), "dim", None),)
        return self._probed[0]

    def _dim(self, dim: object) -> int:
        """A structured method's slice dimension, from its instance's ``dim``."""
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
            raise ValueError(
                f"`method={self.cls.__name__}` is structured: pruning a tensor again slices it along its "
                f"instances' `dim` (as torch.nn.utils.prune does), which must be an integer, got {dim!r}; "
                f"set `self.dim`"
            )
        return int(dim)

    def check_scope(self, scope: Scope) -> None:
        if scope == "global" and self.pruning_type != "unstructured":
            raise ValueError(
                f"`scope='global'` with a custom `method` needs PRUNING_TYPE 'unstructured' "
                f"(as torch.nn.utils.prune.global_unstructured), got {self.pruning_type!r} for {self.name}"
            )

    def _instance(self, amount: float) -> torch_prune.BasePruningMethod:
        kwargs = dict(self.kwargs, amount=amount) if self.takes_amount else self.kwargs
        return self.cls(**kwargs)

    def masks(self, weights, masks, sparsity, *, scope, generator=None):
        self.check_scope(scope)
        if generator is None:
            return self._masks(weights, masks, sparsity, scope=scope)
        # `compute_mask` draws from the global RNG, if at all: seed it from `generator` (the same on every
        # DDP rank) for this call only, and leave the global state as it was
        with seeded(int(torch.randint(0, 2**62, (), generator=generator).item()), weights):
            return self._masks(weights, masks, sparsity, scope=scope)

    def _masks(self, weights: Sequence[Tensor], masks: Sequence[Tensor], sparsity: float, *, scope: Scope):
        if scope == "global":
            flat_w = torch.cat([w.reshape(-1) for w in weights])
            flat_m = torch.cat([m.reshape(-1) for m in masks])
            new = self._one(flat_w, flat_m, sparsity)
            return [part.view(m.shape).clone() for part, m in zip(new.split([m.numel() for m in masks]), masks)]
        return [self._one(w, m, sparsity) for w, m in zip(weights, masks)]

    def _one(self, weight: Tensor, mask: Tensor, sparsity: float) -> Tensor:
        total, alive = mask.numel(), int(torch.count_nonzero(mask).item())
        needed = count_for(sparsity, total) - (total - alive)
        if needed <= 0 or alive == 0:
            return mask.clone()
        method = self._instance(needed / alive)
        effective = weight * mask.to(weight.dtype)  # 8-bit floats do not multiply by a bool tensor
        if alive == total or self.pruning_type == "global":
            # what torch.nn.utils.prune shows a method that prunes a tensor for the first time
            index: tuple[Any, ...] = (...,)  # a 0-dim tensor too
        elif self.pruning_type == "unstructured":
            index = (mask,)
        elif self.pruning_type == "structured":
            dim = self._dim(getattr(method, "dim", None)) % weight.dim()
            index = tuple(slice_alive(mask, dim) if d == dim else slice(None) for d in range(weight.dim()))
        part = effective[index]
        default = mask[index].to(weight.dtype)
        computed = method.compute_mask(part, default_mask=default)
        if not isinstance(computed, Tensor) or computed.shape != part.shape:
            got = f"shape {tuple(computed.shape)}" if isinstance(computed, Tensor) else type(computed).__name__
            raise ValueError(
                f"`method={self.cls.__name__}`: its `compute_mask` returned a mask of {got} for a tensor of shape "
                f"{tuple(part.shape)}; it must return a tensor of the shape of the tensor it is given"
            )
        new = mask.clone()
        new[index] = computed.to(device=mask.device) != 0
        return new & mask


BUILTIN_METHODS = ("l1_unstructured", "random_unstructured", "ln_structured", "random_structured")


def validate_norm(norm: object) -> float:
    """``norm`` as a float: the ``n`` that ``torch.nn.utils.prune.ln_structured`` takes.

    Any real number (``0`` counts the nonzero entries, a negative one or ``-inf`` is the vector
    "norm" ``torch.linalg.vector_norm`` computes for it), ``"inf"``, ``"-inf"`` or ``"fro"`` (the
    Frobenius norm of a slice, its 2-norm); ``ValueError`` otherwise.

    Example:
        >>> validate_norm(2), validate_norm("inf"), validate_norm("fro")
        (2.0, inf, 2.0)
    """
    named = {"inf": math.inf, "infinity": math.inf, "-inf": -math.inf, "-infinity": -math.inf, "fro": 2.0}
    if isinstance(norm, str) and norm.lower() in named:
        return named[norm.lower()]
    if isinstance(norm, bool) or not isinstance(norm, numbers.Real) or math.isnan(norm):
        raise ValueError(f"Expected `norm` to be a real number, 'inf', '-inf' or 'fro', got {norm!r}")
    return float(norm)


def _import(path: str) -> object:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ImportError(path)
    return getattr(importlib.import_module(module_name), attr)


def resolve_method(method: MethodArg, dim: int | None = None, norm: object = None) -> PruningMethod:
    """The :class:`PruningMethod` for a ``method`` argument of :class:`~lightning_prune.PruningCallback`.

    ``method`` is a built-in name, a ``BasePruningMethod`` subclass, or the import path of one
    (``"my_package.FooBarPruningMethod"``, as YAML writes it). ``dim`` and ``norm`` (``None``: 0
    and 2) go to the built-in structured methods; a subclass whose ``__init__`` takes ``dim`` or
    ``n`` gets them as given, and keeps its own defaults for those not given.

    Example:
        >>> resolve_method("ln_structured", dim=1, norm=1).dim
        1
    """
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, numbers.Integral)):
        raise ValueError(f"Expected `dim` to be an int or None, got {dim!r}")
    dim = None if dim is None else int(dim)
    n = 2.0 if norm is None else validate_norm(norm)
    if isinstance(method, torch_prune.BasePruningMethod):
        raise TypeError(
            f"Expected `method` to be a name or a `BasePruningMethod` subclass, got the instance {method!r}. "
            f"HINT: if passing a `BasePruningMethod`, pass the class, not an instance: "
            f"`method={type(method).__name__}`"
        )
    if isinstance(method, str):
        builtin = {
            "l1_unstructured": L1Unstructured,
            "random_unstructured": RandomUnstructured,
        }
        if method in builtin:
            return builtin[method]()
        if method == "ln_structured":
            return LnStructured(dim or 0, n)
        if method == "random_structured":
            return RandomStructured(dim or 0)
        if "." not in method:
            raise ValueError(
                f"Expected `method` to be one of {list(BUILTIN_METHODS)}, a `BasePruningMethod` subclass "
                f"or its import path, got {method!r}"
            )
        try:
            method = _import(method)  # type: ignore[assignment]
        except (ImportError, AttributeError) as err:
            raise ValueError(
                f"`method={method!r}` could not be imported ({err}); expected one of {list(BUILTIN_METHODS)} "
                f"or the import path of a `BasePruningMethod` subclass (in an installed package, on PYTHONPATH, "
                f"or in the current directory)"
            ) from err
    if not (inspect.isclass(method) and issubclass(method, torch_prune.BasePruningMethod)):
        raise TypeError(
            f"Expected `method` to be one of {list(BUILTIN_METHODS)} or a subclass of "
            f"`torch.nn.utils.prune.BasePruningMethod`, got {method!r}. "
            f"HINT: subclass `BasePruningMethod` and implement `compute_mask(t, default_mask)`"
        )
    if inspect.isabstract(method):
        raise TypeError(f"`method={method.__name__}` is abstract: implement `compute_mask(t, default_mask)`")
    if issubclass(method, torch_prune.PruningContainer):
        raise TypeError(
            f"`method={method.__name__}` is torch's container of pruning methods, not a method; expected one of "
            f"{list(BUILTIN_METHODS)} or a `BasePruningMethod` subclass that computes a mask"
        )
    # a real number as given (an int stays an int), a named norm as the number torch's `n` takes
    given = None if norm is None else norm if isinstance(norm, numbers.Real) else n
    return CustomMethod(method, dim, given)
