"""The reparametrization of a pruned tensor, in the layout of ``torch.nn.utils.prune``.

:func:`apply` turns ``module.<name>`` into

- ``<name>_orig``: the very same ``nn.Parameter`` object, in the same place among the module's
  parameters (optimizers keep working, and ones built later index their state the same way),
- ``<name>_mask``: a ``torch.bool`` buffer on the parameter's device,
- a forward pre-hook, a :class:`MaskHook`, that recomputes ``module.<name> = orig * mask``.

The hook is a ``torch.nn.utils.prune.BasePruningMethod``, so ``prune.is_pruned`` and
``prune.remove`` understand it. :func:`update` writes a new mask in place, :func:`remove`
makes the pruning permanent. A pruned module survives ``copy.deepcopy`` and pickling, and
loads a plain ``state_dict`` (one with ``<name>`` instead of ``<name>_orig``/``<name>_mask``),
keeping its mask.

Example:
    >>> import torch
    >>> layer = torch.nn.Linear(2, 2)
    >>> apply(layer, "weight", torch.tensor([[True, False], [False, True]]))
    >>> sorted(name for name, _ in layer.named_parameters()), layer.weight_mask.dtype
    (['bias', 'weight_orig'], torch.bool)
    >>> remove(layer, "weight")
    >>> int((layer.weight == 0).sum())
    2
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from lightning_prune.masks import one_cpu_thread

__all__ = [
    "READ_DIRECTLY",
    "MaskHook",
    "RefreshChildren",
    "apply",
    "find_hook",
    "hook_parents",
    "is_reparametrized",
    "refresh",
    "remove",
    "rename_parameter",
    "update",
]

_CHUNK = 1 << 20


_is_compiling = torch.compiler.is_compiling  # constant `True` where `torch.compile` traces, and in `torch.export`
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch >= 2.6


class MaskHook(torch_prune.BasePruningMethod):
    """Forward pre-hook that recomputes ``module.<name>`` from ``<name>_orig`` and the bool mask."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, name: str) -> None:
        self._tensor_name = name
        self._handles: list[Any] = []
        self._parents: list[Any] = []  # the handles of the `RefreshChildren` hooks that run this hook
        self._last: weakref.ref[Tensor] | Tensor | None = None  # the tensor the last call set
        # (mask, its version, its data pointer, mask in the weight's dtype)
        self._cache: tuple[Tensor, int, int, Tensor] | None = None

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        return default_mask

    def apply_mask(self, module: nn.Module, compiling: bool | None = None) -> Tensor:
        orig, mask = module._parameters[self._tensor_name + "_orig"], module._buffers[self._tensor_name + "_mask"]
        assert orig is not None and mask is not None
        if _is_compiling() if compiling is None else compiling:
            # In a graph `torch.compile` traces, the cast fuses with the multiply, and the cache's
            # check of the mask's version could not be traced (nor guarded without recompiling at
            # every event).
            return orig * mask.to(orig.dtype)
        return orig * self._multiplier(mask, orig.dtype)

    def _multiplier(self, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """``mask`` in ``dtype``, converted once per mask change (a bool factor is cast on every multiply).

        A change is a new mask object, a write that moves its version counter, or new memory under it
        (``mask.data = other``). A write through ``mask.data`` moves neither: it shows at the next commit.
        Made outside inference mode even for a forward inside it: an inference tensor could not be
        saved for backward by the training forwards that reuse it. A mask without memory of its own
        (one that ``torch.func`` transforms wrap, as ``functional_call`` under ``vmap`` passes) is
        converted at every call and not kept.
        """
        cached = self._cache
        if (
            cached is None
            or cached[0] is not mask
            or cached[1] != mask._version
            or cached[2] != mask.data_ptr()
            or cached[3].dtype != dtype
        ):
            try:
                pointer = mask.data_ptr()
            except RuntimeError:
                return mask.to(dtype)
            with torch.inference_mode(False):
                cached = self._cache = (mask, mask._version, pointer, mask.to(dtype))
        return cached[3]

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        compiling = _is_compiling()
        if not compiling:  # the last forward's tensor goes first, not after the new one is made (once backward ran,
            module.__dict__.pop(self._tensor_name, None)  # nothing else holds it: one weight's memory less at peak)
        try:
            weight = self.apply_mask(module, compiling)
        except BaseException:  # such as the stop of a non-reentrant checkpoint's recompute: leave a weight there
            if not compiling and self._tensor_name not in module.__dict__:
                with contextlib.suppress(Exception):
                    refresh(module, self._tensor_name)
            raise
        setattr(module, self._tensor_name, weight)
        # where `torch.compile` traces, a reference itself (making a weak one breaks the graph before torch 2.6;
        # the module holds the tensor as long anyway), not where `torch.export` does (a fake tensor it drops)
        self._last = weight if compiling and not _is_exporting() else weakref.ref(weight)

    def remove(self, module: nn.Module) -> None:
        """Make the pruning permanent in place, the parameter in its place (``prune.remove`` calls this).

        The ``load_state_dict`` hook goes here too; ``torch.nn.utils.prune.remove`` deletes the
        forward pre-hook itself, while it walks the module's forward pre-hooks, and :func:`remove`
        deletes it after this.
        """
        name = self._tensor_name
        orig, mask = module._parameters[name + "_orig"], module._buffers[name + "_mask"]
        assert orig is not None and mask is not None
        with torch.no_grad():  # 8-bit floats do not multiply by a bool tensor: a 1-byte copy of the mask for them
            orig.mul_(mask if orig.dtype.itemsize > 1 else mask.to(orig.dtype))
        del module._buffers[name + "_mask"]
        module.__dict__.pop(name, None)
        rename_parameter(module, name + "_orig", name)
        self._release(module)

    def _release(self, module: nn.Module) -> None:
        """Remove the ``load_state_dict`` hook, and the parents' hooks if no other tensor of ``module`` needs them."""
        for handle in self._handles[1:]:  # [forward pre-hook, load_state_dict pre-hook]
            handle.remove()
        if not any(_holds_mask_hook(h) and h is not self for h in module._forward_pre_hooks.values()):
            for handle in getattr(self, "_parents", []):  # the module's last pruned tensor: no parent hook needed
                handle.remove()

    def __deepcopy__(self, memo: dict[int, Any]) -> MaskHook:
        # The module's recomputed tensor is part of an autograd graph after a forward pass, and
        # such tensors refuse deepcopy. The hook is copied before that attribute (hooks are set
        # up in ``nn.Module.__init__``), so register a detached copy of it under its id.
        last = self._last() if isinstance(self._last, weakref.ref) else self._last
        if last is not None and not last.is_leaf:
            memo[id(last)] = last.detach().clone()
            memo.setdefault(id(memo), []).append(last)  # keep the original alive, as deepcopy does
        new = MaskHook(self._tensor_name)
        memo[id(self)] = new
        new._handles = copy.deepcopy(self._handles, memo)
        new._parents = copy.deepcopy(getattr(self, "_parents", []), memo)
        return new

    def __getstate__(self) -> dict[str, Any]:
        return {
            **{"_tensor_name": self._tensor_name, "_handles": self._handles, "_parents": getattr(self, "_parents", [])},
            **{"_last": None, "_cache": None},
        }


class _LoadPlain:
    """``load_state_dict`` pre-hook: accept ``<name>`` for ``<name>_orig``, keep the mask if absent,
    take a float mask (``torch.nn.utils.prune``'s) as the bool mask it stands for.

    Loading the plain weights saved before training into a pruned module is a rewind that keeps
    the pruned entries pruned, as the lottery-ticket procedure wants.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if self.name + "_orig" not in module._parameters or not _holds_mask_hook(find_hook(module, self.name)):
            return  # not pruned, or pruned again by torch alone after `prune.remove` took ours away
        plain, orig, mask = prefix + self.name, prefix + self.name + "_orig", prefix + self.name + "_mask"
        if plain in state_dict and orig not in state_dict:
            state_dict[orig] = state_dict.pop(plain)
            if mask not in state_dict and self.name + "_mask" in module._buffers:
                state_dict[mask] = module._buffers[self.name + "_mask"]
        saved = state_dict.get(mask)
        if isinstance(saved, Tensor) and saved.dtype != torch.bool:  # torch's float mask: `assign=True` would keep it
            state_dict[mask] = saved != 0


def rename_parameter(module: nn.Module, old: str, new: str) -> None:
    """Register ``module.<old>`` as ``module.<new>`` in the same place among the module's parameters.

    The order of ``parameters()`` is what optimizers index their state by: a reordered module
    builds optimizers whose saved state no longer fits it (``torch.nn.utils.prune`` moves the
    pruned parameter to the end).

    Example:
        >>> layer = torch.nn.Linear(2, 2)
        >>> rename_parameter(layer, "weight", "weight_orig")
        >>> [name for name, _ in layer.named_parameters()]
        ['weight_orig', 'bias']
    """
    param = module._parameters[old]
    order = [new if key == old else key for key in module._parameters]
    module.register_parameter(new, param)  # its checks, and any registration hooks
    del module._parameters[old]
    for key in order:
        module._parameters[key] = module._parameters.pop(key)


def find_hook(module: nn.Module, name: str) -> torch_prune.BasePruningMethod | None:
    """The pruning forward pre-hook of ``module.<name>`` (ours or torch's), if any."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, torch_prune.BasePruningMethod) and hook._tensor_name == name:
            return hook
    return None


def _holds_mask_hook(hook: object) -> bool:
    """Whether ``hook`` is a :class:`MaskHook` or torch's container of pruning methods holding one."""
    return isinstance(hook, MaskHook) or any(isinstance(m, MaskHook) for m in getattr(hook, "_pruning_methods", ()))


def is_reparametrized(module: nn.Module, name: str) -> bool:
    """Whether ``module.<name>`` is pruned by a :class:`MaskHook`."""
    return isinstance(find_hook(module, name), MaskHook)


@torch.no_grad()
def refresh(module: nn.Module, name: str) -> None:
    """Set ``module.<name>`` to the masked weight now, so the zeros show before any forward."""
    orig, mask = module._parameters[name + "_orig"], module._buffers[name + "_mask"]
    assert orig is not None and mask is not None
    weight = torch.empty(orig.shape, dtype=orig.dtype, device=orig.device)
    # The mask is cast into the weight's own memory and multiplied there: `orig * mask` would cast
    # the bool mask into a float temporary as large as the tensor, and in pieces each piece's
    # temporary is memory the allocator keeps. Chunks keep the two passes within the cache.
    flat_w, flat_o, flat_m = weight.view(-1), orig.reshape(-1), mask.reshape(-1)
    with one_cpu_thread(weight.device):  # two small ops a chunk
        for start in range(0, flat_w.numel(), _CHUNK):
            piece = flat_w[start : start + _CHUNK]
            piece.copy_(flat_m[start : start + _CHUNK]).mul_(flat_o[start : start + _CHUNK])
    setattr(module, name, weight)


def _check_shape(name: str, mask: Tensor | None, shape: torch.Size) -> None:
    if mask is not None and mask.shape != shape:
        raise ValueError(f"Expected a mask of shape {tuple(shape)} for `{name}`, got {tuple(mask.shape)}")


def _adopt(module: nn.Module, name: str, hook: torch_prune.BasePruningMethod) -> None:
    """Replace ``torch.nn.utils.prune``'s hook and float mask by ours, keeping the mask."""
    mask = module._buffers[name + "_mask"]
    assert mask is not None
    for key, value in list(module._forward_pre_hooks.items()):
        if value is hook:  # torch keeps no handle for its hooks
            del module._forward_pre_hooks[key]
    # torch's pruning stacked on ours holds our hook in its container; ours goes, with its `load_state_dict` hook
    ours = [m for m in getattr(hook, "_pruning_methods", ()) if isinstance(m, MaskHook)]
    for old in ours:
        for handle in old._handles[1:]:
            handle.remove()
    with torch.inference_mode(False):
        module._buffers[name + "_mask"] = mask != 0
    _register_hooks(module, name)._parents = [h for old in ours for h in getattr(old, "_parents", [])]


def _register_hooks(module: nn.Module, name: str) -> MaskHook:
    hook = MaskHook(name)
    hook._handles = [
        # first: the hooks of `weight_norm` and `spectral_norm` read the masked tensor
        module.register_forward_pre_hook(hook, prepend=True),
        module.register_load_state_dict_pre_hook(_LoadPlain(name)),
    ]
    refresh(module, name)
    return hook


def apply(
    module: nn.Module, name: str, mask: Tensor | None = None, *, replace: bool = False, copy: bool = True
) -> None:
    """Reparametrize ``module.<name>`` (if needed) and set its mask.

    Args:
        module: the module that owns the parameter.
        name: the parameter's name in ``module``, e.g. ``"weight"``.
        mask: the new boolean mask; ``None`` keeps the current one (all ``True`` if new).
            It is combined with the current mask: pruned entries stay pruned.
        replace: set ``mask`` as it is instead (restoring saved masks, not pruning further).
        copy: a new ``<name>_mask`` buffer is a copy of ``mask``; ``False`` makes ``mask`` itself
            the buffer where it is already a contiguous bool tensor on the parameter's device (the
            caller hands it over, and writes to it no more).

    A tensor pruned by ``torch.nn.utils.prune`` is adopted: its mask is kept (as bool) and
    its hook is replaced, never doubled. On failure the module is left as it was.
    """
    check(module, name, mask)  # before anything changes
    hook = find_hook(module, name)
    if hook is not None and not isinstance(hook, MaskHook):
        _adopt(module, name, hook)
    elif hook is None:
        param = module._parameters[name]
        assert param is not None
        with torch.inference_mode(False):  # a buffer that later forwards and commits can use, as torch's
            initial = (
                torch.ones_like(param, dtype=torch.bool)
                if mask is None
                else mask.to(param.device, torch.bool, copy=copy or mask.is_inference())
            )
            initial = initial.contiguous()  # an expanded all-True view (see `core.all_true`) becomes a buffer
        rename_parameter(module, name, name + "_orig")
        try:
            module.register_buffer(name + "_mask", initial)
            _register_hooks(module, name)
            return
        except Exception:
            module._buffers.pop(name + "_mask", None)
            module.__dict__.pop(name, None)
            rename_parameter(module, name + "_orig", name)
            raise
    if mask is not None:
        update(module, name, mask, replace=replace)


def check(module: nn.Module, name: str, mask: Tensor | None = None) -> None:
    """Raise where :func:`apply` would refuse ``module.<name>`` or ``mask``, before anything changes.

    A tensor not pruned yet must be a floating-point ``nn.Parameter``, and the module must hold
    nothing under ``<name>_orig`` (the parameter would replace it) nor under ``<name>_mask`` but a
    buffer (which is taken as a mask); ``mask`` must have the tensor's shape.

    Example:
        >>> check(torch.nn.Linear(2, 3), "weight", torch.ones(3, 2, dtype=torch.bool))
        >>> check(torch.nn.Linear(2, 3), "bias")
    """
    hook = find_hook(module, name)
    if hook is not None:
        current = module._buffers.get(name + "_mask")
        assert current is not None
        _check_shape(name, mask, current.shape)
        return
    param = module._parameters.get(name)
    if not isinstance(param, nn.Parameter) or not param.is_floating_point():
        raise ValueError(
            f"Expected `{name}` of {type(module).__name__} to be a floating-point nn.Parameter, "
            f"got {type(param).__name__ if param is None else param.dtype}"
        )
    orig, mask_name = name + "_orig", name + "_mask"
    taken = [n for n in (orig, mask_name) if hasattr(module, n) and not (n == mask_name and n in module._buffers)]
    if taken:
        raise ValueError(
            f"Cannot prune `{name}` of {type(module).__name__}: it already has an attribute `{taken[0]}`, a name "
            f"that pruning `{name}` gives its parameter (`{orig}`) and mask buffer (`{mask_name}`); rename that "
            f"attribute, or leave `{name}` unpruned"
        )
    _check_shape(name, mask, param.shape)


@torch.no_grad()
def update(module: nn.Module, name: str, mask: Tensor, *, replace: bool = False) -> None:
    """Write ``mask`` (combined with the current one, unless ``replace``) into ``<name>_mask`` in place."""
    current = module._buffers[name + "_mask"]
    assert current is not None
    _check_shape(name, mask, current.shape)
    new = mask.to(device=current.device, dtype=torch.bool)
    if replace:
        current.copy_(new)
    else:
        current &= new
    refresh(module, name)


@torch.no_grad()
def remove(module: nn.Module, name: str) -> None:
    """Make the pruning of ``module.<name>`` permanent: a plain parameter with zeros where pruned.

    The parameter object stays the same (``<name>_orig`` becomes ``<name>`` again, in its
    place), the mask buffer and both hooks go.
    """
    hook = find_hook(module, name)
    if hook is None:
        raise ValueError(f"Parameter `{name}` of {type(module).__name__} is not pruned; nothing to remove")
    if not isinstance(hook, MaskHook):
        torch_prune.remove(module, name)
        for ours in getattr(hook, "_pruning_methods", ()):  # torch's pruning stacked on ours
            if isinstance(ours, MaskHook):
                ours._release(module)
        return
    hook.remove(module)
    for handle in hook._handles:
        handle.remove()


class RefreshChildren:
    """Forward pre-hook on a module whose forward reads its submodules' tensors without calling them.

    ``nn.MultiheadAttention`` passes ``out_proj.weight`` to its attention function and never calls
    ``out_proj``, so ``out_proj``'s own :class:`MaskHook` would never run: the weight would keep the
    value of the last event, cut off from ``weight_orig``'s gradient. This hook runs the pruning
    hooks of the named submodule first (:class:`MaskHook` or torch's own). It goes with the
    submodule's last :class:`MaskHook` (:func:`remove`, ``torch.nn.utils.prune.remove``), or at the
    first forward after torch's pruning hooks on it were removed.
    """

    def __init__(self, child: str) -> None:
        self.child = child
        self.handle: Any = None

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        child = getattr(module, self.child)
        pruned = False
        for hook in list(child._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                hook(child, inputs)
                pruned = True
        if not pruned and self.handle is not None:
            self.handle.remove()  # the submodule's pruning was removed without this package's hook


#: Modules of torch whose forward reads this submodule's tensors without calling it.
#: (``nn.TransformerEncoderLayer``'s inference fast path does too, but it is not taken while any of
#: its submodules has a forward pre-hook, which a pruned one has.)
READ_DIRECTLY: dict[type[nn.Module], str] = {nn.MultiheadAttention: "out_proj"}


def hook_parents(model: nn.Module) -> None:
    """Give a :class:`RefreshChildren` hook (once) to every module of ``model`` listed in
    :data:`READ_DIRECTLY` whose listed submodule has a tensor reparametrized here.

    Example:
        >>> import torch
        >>> attention = torch.nn.MultiheadAttention(4, 2)
        >>> apply(attention.out_proj, "weight", torch.rand(4, 4) > 0.5)
        >>> hook_parents(attention)
        >>> _ = attention(*[torch.randn(3, 1, 4)] * 3)[0].sum().backward()
        >>> attention.out_proj.weight_orig.grad is not None
        True
        >>> remove(attention.out_proj, "weight")
        >>> len(attention._forward_pre_hooks)
        0
    """
    for module in model.modules():
        name = next((c for cls, c in READ_DIRECTLY.items() if isinstance(module, cls)), "")
        child = getattr(module, name, None) if name else None
        if child is None:
            continue
        hooks = [h for h in child._forward_pre_hooks.values() if isinstance(h, torch_prune.BasePruningMethod)]
        if not hooks:
            continue
        refresh = next((h for h in module._forward_pre_hooks.values() if isinstance(h, RefreshChildren)), None)
        if refresh is None:
            refresh = RefreshChildren(name)
            refresh.handle = module.register_forward_pre_hook(refresh)
        for hook in hooks:
            if isinstance(hook, MaskHook) and not any(h is refresh.handle for h in hook._parents):
                hook._parents.append(refresh.handle)
