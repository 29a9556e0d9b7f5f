"""Masks kept beside plain parameters, applied to gradients as they arrive and to weights.

The opt-in alternative to the reparametrization (``PruningCallback(masking="in_place")``): the
weights stay ordinary ``nn.Parameter`` objects and nothing is recomputed in the forward pass.
Pruned entries are zeroed when a mask is committed, and then kept at zero with the gradients the
reparametrization would produce:

- each pruned entry's gradient is zeroed as soon as backward accumulates it (a post-accumulate
  gradient hook per masked parameter), so gradient clipping, gradient norms and optimizers that
  mix gradient entries see exactly the gradients of ``torch.nn.utils.prune``'s ``<name>_orig``;
  when backward builds a graph of the gradients (``create_graph=True``, as for gradient
  penalties), a tensor hook masks them with a differentiable multiply instead, so second-order
  terms match too, ``torch.autograd.grad`` with ``create_graph=True`` included;
- a :func:`zero_preserving` optimizer (``SGD``, ``Adam``, ``AdamW`` and the other element-wise
  ``torch.optim`` classes in :data:`ZERO_PRESERVING`, by exact type, with a positive ``eps``)
  does not move an entry whose weight, gradient and state are zero, weight decay included;
  its state is zeroed at pruned entries whenever a weight gets its gradient hook (on
  ``attach``, on ``commit``, once an unfrozen weight is seen), and nothing else runs per step;
- the pruned weights are zeroed again after every ``step()`` (one fused ``torch._foreach_mul_``
  over all masked weights: in place for those written since they were last masked, and through
  ``.data`` for the others, whose values it leaves as they are, so a graph that saved one of
  those, such as a loss built before another optimizer's step, stays valid) while any attached
  optimizer is not zero-preserving, while a masked weight has no gradient hook yet (it was
  frozen; :meth:`InPlaceMasks.sync`, called before each backward and each step, hooks it once it
  requires gradients), or when asked to (``attach(per_step=True)``: gradients that do not come
  from backward alone, such as a DDP communication hook that changes their values); in that case
  also before each further evaluation of the step's closure (``LBFGS`` moves the weights between
  the evaluations of one step, and its forward passes must see the pruned entries at zero).

While attached, a global hook runs after every optimizer's step: one that is not attached but steps
a masked weight (one a module makes and steps itself) is followed by the same pass; after an
attached one's step it notes the weights' version counters, so that weights written by other code
after a step (copied into, which moves their version counters) are zeroed again by
:meth:`InPlaceMasks.zero_written`, which the callback calls before each training and validation
batch and each checkpoint of a fit.

A ``.grad`` written by code other than backward is not masked (with ``attach(per_step=True)``
the pruned weights still stay at zero). A gradient accumulated before a
:meth:`InPlaceMasks.commit` and stepped after it is masked by the new mask, where
``<name>_orig.grad`` keeps it at the newly pruned entries (norm clipping of that step differs;
the weights stay at zero). ``torch.autograd.grad`` without ``create_graph`` returns the full
gradient of a masked weight, pruned entries included: it writes no ``.grad``, and nothing tells
its hooks apart from an ordinary backward's at no cost. In an ordinary backward a hook
registered with ``weight.register_hook`` sees the gradient before it is masked, as a hook on the
reparametrization's recomputed ``weight`` does; one registered with
``register_post_accumulate_grad_hook``, before or after, sees it masked (the mask's runs first),
as on ``<name>_orig``. With ``create_graph`` the gradient is masked as ``<name>_orig``'s is, also
where the reparametrization would give the recomputed ``weight``'s full one
(``torch.autograd.grad(loss, layer.weight, create_graph=True)``, a gradient penalty): the one
plain tensor stands for both.

An optimizer that reads the weights themselves (``Adafactor`` scales its step by their RMS) sees
zeros at pruned entries here, where the reparametrization shows it the stale ``<name>_orig``.

Example:
    >>> import torch
    >>> from lightning_prune.targets import resolve_targets
    >>> layer = torch.nn.Linear(2, 2, bias=False)
    >>> masks = InPlaceMasks()
    >>> masks.commit(resolve_targets(layer), [torch.tensor([[True, False], [False, True]])])
    >>> opt = torch.optim.SGD(layer.parameters(), lr=1.0, momentum=0.9)
    >>> masks.attach([opt])
    >>> layer(torch.ones(1, 2)).sum().backward(); opt.step()
    >>> int((layer.weight == 0).sum()), int((layer.weight.grad == 0).sum())
    (2, 2)
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from lightning_prune.targets import Target

__all__ = ["ZERO_PRESERVING", "InPlaceMasks", "zero_preserving"]

_version = operator.attrgetter("_version")  # a tensor's version counter, read without a Python frame

#: Optimizer classes whose update leaves an entry at zero when its weight, gradient and state
#: are zero (plain, momentum, Nesterov, decoupled or L2 weight decay, AMSGrad, centered, any
#: ``foreach``/``fused`` implementation). Matched by exact type: a subclass may step differently.
ZERO_PRESERVING: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Rprop,
    torch.optim.ASGD,
)


class _MaskGradient:
    """The two gradient hooks of one masked weight: ``grad * factor`` wherever backward delivers it.

    :meth:`before` is a tensor hook. It masks out of place (a differentiable op) when backward
    builds a graph of the gradient (``create_graph=True``, the gradient penalties and
    meta-gradients that differentiate through it), and also covers ``torch.autograd.grad``
    in that mode. :meth:`after` runs once the gradient is accumulated into ``.grad``, which the
    weight then owns (autograd copied it if anything else held it), and masks it in place
    without allocating: the usual backward, run without grad mode.
    """

    def __init__(self, factor: Tensor) -> None:
        self.factor = factor

    def before(self, grad: Tensor) -> Tensor | None:
        # in the gradient's dtype: a weight cast after attach (`model.half()`) keeps its factor
        return grad * self.factor.to(grad.dtype) if torch.is_grad_enabled() else None

    def after(self, param: Tensor) -> None:
        # No `torch.no_grad()` here: backward runs without grad mode unless it builds a graph,
        # and then `before` has masked the gradient already. A context manager per call costs
        # about 1% of a LeNet-300-100 step.
        if param.grad is not None and not torch.is_grad_enabled():
            param.grad.mul_(self.factor)


def _run_first(weight: Tensor, handle: Any) -> bool:
    """Run the post-accumulate gradient hook of ``handle`` before ``weight``'s others, registered earlier
    (an optimizer stepped in backward, a per-parameter clip): they see the masked gradient, as a hook on
    ``<name>_orig`` does. Whether there were others. Autograd runs the hooks in the order of the dict's
    entries, which ``move_to_end`` does not change: the dict is refilled in place, where the other
    handles find their entries."""
    hooks = getattr(weight, "_post_accumulate_grad_hooks", None)
    if not isinstance(hooks, dict) or len(hooks) < 2 or handle.id not in hooks:
        return False
    ours = hooks.pop(handle.id)
    rest = list(hooks.items())
    hooks.clear()
    hooks[handle.id] = ours
    hooks.update(rest)
    return True


_AFTER_ANY_STEP: list[tuple[weakref.ref[InPlaceMasks], Any]] = []  # the global hooks, and whose they are


def _register_after_any_step(masks: InPlaceMasks) -> Any:
    """A global hook after every optimizer's step that calls ``masks._after_any_step`` while ``masks`` lives. It
    holds no reference to them (masks attached and never detached are not kept alive); once they are gone it does
    nothing, and the next registration removes it (not the hook itself: optimizers iterate over the hooks)."""
    for ref, handle in _AFTER_ANY_STEP:
        if ref() is None:
            handle.remove()
    _AFTER_ANY_STEP[:] = [(ref, handle) for ref, handle in _AFTER_ANY_STEP if ref() is not None]
    ref = weakref.ref(masks)

    def after_any_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        current = ref()
        if current is not None:
            current._after_any_step(optimizer)

    handle = register_optimizer_step_post_hook(after_any_step)
    _AFTER_ANY_STEP.append((ref, handle))
    return handle


def _factor(mask: Tensor, dtype: torch.dtype, old: Tensor | None) -> Tensor:
    """``mask`` in ``dtype``; written into ``old`` where it fits, so an event allocates no new factors."""
    if old is not None and old.shape == mask.shape and old.dtype == dtype and old.device == mask.device:
        return old.copy_(mask)
    return mask.to(dtype)


def zero_preserving(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` leaves a weight at zero when the weight, its gradient and its state are zero.

    Its exact type is in :data:`ZERO_PRESERVING` and no parameter group divides by a zero ``eps``
    (``0 / (0 + 0)`` would make a pruned weight NaN).

    Example:
        >>> import torch
        >>> params = [torch.nn.Parameter(torch.zeros(1))]
        >>> zero_preserving(torch.optim.Adam(params)), zero_preserving(torch.optim.Adam(params, eps=0.0))
        (True, False)
    """
    return type(optimizer) in ZERO_PRESERVING and all(g.get("eps", 1.0) > 0 for g in optimizer.param_groups)


class InPlaceMasks:
    """Bool masks by qualified name, their float factors, and the hooks that apply them."""

    def __init__(self) -> None:
        self.masks: dict[str, Tensor] = {}
        self._params: dict[str, Tensor] = {}  # the masked weights by qualified name
        self._weights: list[Tensor] = []
        self._factors: list[Tensor] = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self._optimizer_ids: list[int] = []  # theirs, which `sync` compares (an optimizer may define `__eq__`)
        self._attached = False  # between `attach` and `detach`, with optimizers or none
        self._any_step: Any = None  # the hook after any optimizer's step, while attached; see `_after_any_step`
        # other optimizers by id: (a reference, its number of parameter groups, whether it steps a masked weight)
        self._stepping_others: dict[int, tuple[weakref.ref[torch.optim.Optimizer], int, bool]] = {}
        self._per_step = False  # forced by attach(); see `per_step`
        self._step_handles: list[Any] = []
        self._load_handles: list[Any] = []  # zero the state that each attached optimizer loads
        self._grad_handles: dict[int, tuple[Any, ...]] = {}  # id(weight) -> its gradient hooks
        # each hooked weight's post-accumulate hooks, and the key of the last, its mask's: see `refresh_hooks`
        self._hook_dicts: list[dict[Any, Any]] = []
        self._last_keys: list[Any] = []
        self._seen_versions: list[int] = []  # each weight's version when its pruned entries were last zeroed

    def current(self, targets: Sequence[Target]) -> list[Tensor | None]:
        """Each target's mask, ``None`` where it has none yet."""
        return [self.masks.get(t.qualname) for t in targets]

    @torch.inference_mode(False)  # masks and factors that later steps can use, also when committed inside it
    @torch.no_grad()  # inside: leaving inference mode turns grad mode on
    def commit(
        self, targets: Sequence[Target], masks: Sequence[Tensor], *, replace: bool = False, copy: bool = True
    ) -> None:
        """Store ``masks`` (combined with the current ones, unless ``replace``) and zero the pruned entries now.

        Pruned weights are zeroed, and so are their entries in the state of the attached
        zero-preserving optimizers (momentum, moments), which nothing else would clear; the
        same happens to a weight's state when it gets its gradient hook. A mask stored as it is
        is a copy, unless ``copy=False`` (the caller hands it over and writes to it no more).
        """
        for target, mask in zip(targets, masks):
            param = target.parameter
            old = self.masks.get(target.qualname)
            if old is None or replace:  # stored as it is: not an expanded all-True view
                stored = mask.to(param.device, torch.bool, copy=copy or mask.is_inference())
                self.masks[target.qualname] = stored.contiguous()
            else:
                self.masks[target.qualname] = old & mask.to(param.device, torch.bool)
        self._params.update((t.qualname, t.parameter) for t in targets)
        previous = dict(zip(map(id, self._weights), self._factors))
        self._weights = [self._params[name] for name in self.masks]
        masks = list(self.masks.values())
        self._factors = [_factor(m, w.dtype, previous.get(id(w))) for m, w in zip(masks, self._weights)]
        self.apply()
        if self._attached:
            self._unhook_gradients()
            self.refresh_hooks()  # zeroes the optimizer state at the newly pruned entries

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned weight (a fused multiply by the cached float masks)."""
        if self._weights:
            torch._foreach_mul_(self._weights, self._factors)
        self._seen_versions = list(map(_version, self._weights))

    @torch.no_grad()
    def _apply_after_step(self) -> None:
        """Zero every pruned weight after an optimizer's step, bumping the version only of weights written since.

        A weight whose version has not moved since this pass last multiplied it has its pruned entries
        at zero and keeps its values, so it is multiplied through ``.data``: a graph that saved it (a
        loss built before another optimizer's step, whose ``manual_backward`` a GAN runs next) stays
        valid. A weight written since (by the step, or by code between steps) is multiplied in place,
        so a graph that saved the values it had is refused by autograd instead of used with others.
        Writes that move no version counter (fused kernels, ``.data`` copies of master weights) are
        masked all the same.
        """
        weights = self._weights
        seen = self._seen_versions if len(self._seen_versions) == len(weights) else [-1] * len(weights)
        loud: list[int] = []
        quiet: list[int] = []
        for i, (w, v) in enumerate(zip(weights, seen)):
            (loud if w._version != v else quiet).append(i)
        if loud:
            torch._foreach_mul_([weights[i] for i in loud], [self._factors[i] for i in loud])
        if quiet:
            torch._foreach_mul_([weights[i].data for i in quiet], [self._factors[i] for i in quiet])
        self._seen_versions = list(map(_version, weights))

    def zero_written(self) -> None:
        """Zero the pruned entries again in the weights written since they were last zeroed or since an attached
        optimizer's step (code other than the steps copying into them: StochasticWeightAveraging's averages at
        its batch-norm epoch, a Lookahead in ``optimizer_step``, a callback's copy at a batch's end). Writes that
        move no version counter (through ``.data``) go unnoticed. Without writes, a version read per weight."""
        weights, seen = self._weights, self._seen_versions
        versions = list(map(_version, weights))
        if versions == seen:
            return
        written = [i for i, v in enumerate(versions) if len(seen) != len(weights) or v != seen[i]]
        with torch.no_grad():  # not entered otherwise: it costs more than the check
            torch._foreach_mul_([weights[i] for i in written], [self._factors[i] for i in written])
        self._seen_versions = list(map(_version, weights))

    def reapply(self) -> None:
        """Zero the pruned weights and their optimizer state again, after both were written from elsewhere
        (a rewind that restored a snapshot of them)."""
        self.apply()
        self._zero_state()

    def attach(self, optimizers: Sequence[torch.optim.Optimizer], *, per_step: bool = False) -> None:
        """Mask gradients from now on, and keep pruned entries at zero through ``optimizers``' steps.

        Args:
            optimizers: the optimizers that step the masked weights.
            per_step: zero the pruned weights after every step even where the optimizers would
                keep them at zero: for gradients that do not come from backward alone (a DDP
                communication hook that changes their values, a ``.grad`` written by other code).
        """
        self.detach()
        self._optimizers, self._per_step, self._attached = list(optimizers), per_step, True
        self._optimizer_ids = list(map(id, self._optimizers))
        self._any_step = _register_after_any_step(self)
        self.refresh_hooks()  # no weight is written here: `sync` may run between forward and backward
        # a state saved before an event (a user's own rewind) holds momentum and moments at its pruned entries
        self._load_handles = [opt.register_load_state_dict_post_hook(self._zero_state) for opt in self._optimizers]
        # (an optimizer replaced while it steps, rebuilt in the closure of its own `step`, finishes that step after
        # this: `_after_any_step` zeroes what it moved, as for any optimizer not attached)

    def sync(
        self, optimizers: Sequence[torch.optim.Optimizer], *, per_step: bool = False, backward: bool = True
    ) -> None:
        """Catch up with changes since :meth:`attach`; call it before each backward and optimizer step.

        Optimizers other than the attached ones (rebuilt during training) are attached in their
        place; a masked weight that requires gradients since (unfrozen) gets its gradient hook,
        its present gradient masked and its state zeroed; a weight given post-accumulate gradient
        hooks since gets its own again, before and after them (checked where ``backward``: before
        an optimizer step, whose gradients are accumulated already, pass ``False``); ``per_step=True``
        (a DDP communication hook registered since) attaches again as ``attach(per_step=True)``, for
        good. Otherwise this costs a few identity and flag checks, and before a backward one per
        masked weight for its hooks: on LeNet-300-100's three weights, one thread of the AMD EPYC of
        ``benchmarks/RESULTS.md``, 2.4 µs a call before a backward and 0.95 µs before a step.
        """
        if per_step and not self._per_step:
            self.attach(optimizers, per_step=True)
        elif list(map(id, optimizers)) != self._optimizer_ids:
            self.attach(optimizers, per_step=self._per_step)
        elif len(self._grad_handles) < len(self._weights) and any(
            w.requires_grad and id(w) not in self._grad_handles for w in self._weights
        ):
            self.refresh_hooks()
        elif backward and list(map(next, map(reversed, self._hook_dicts))) != self._last_keys:  # (one emptied:
            # shorter)
            self._unhook_gradients()  # gradient hooks registered since (in a module's `on_train_start`): the
            self.refresh_hooks()  # mask goes before them and once more after them

    def refresh_hooks(self) -> None:
        """Hook the gradients of masked weights that now require them (unfrozen since); decide the per-step pass.

        A newly hooked weight's present gradient is masked and its optimizer state zeroed. The
        weights are zeroed after every step while any attached optimizer is not
        :func:`zero_preserving`, any masked weight has no gradient hook (it is frozen), or
        ``attach(per_step=True)``.
        """
        if not self._attached:
            return
        hooked = len(self._grad_handles)
        for weight, factor in zip(self._weights, self._factors):
            if weight.requires_grad and id(weight) not in self._grad_handles:
                hook = _MaskGradient(factor)
                with torch.no_grad():
                    hook.after(weight)  # a gradient accumulated before the hook existed
                after = weight.register_post_accumulate_grad_hook(hook.after)
                handles: tuple[Any, ...] = (weight.register_hook(hook.before), after)
                if _run_first(weight, after):  # and once more after the others, which may write the gradient
                    handles += (weight.register_post_accumulate_grad_hook(hook.after),)
                self._grad_handles[id(weight)] = handles
        if len(self._grad_handles) > hooked:
            self._zero_state()  # momentum gathered from unmasked gradients would move pruned weights
        # each hooked weight's last post-accumulate hook, its mask's: `sync` notices hooks added since
        hooked_weights = [w for w in self._weights if id(w) in self._grad_handles]
        self._hook_dicts = [w._post_accumulate_grad_hooks for w in hooked_weights]
        self._last_keys = [self._grad_handles[id(w)][-1].id for w in hooked_weights]
        needed = (
            self._per_step
            or not all(map(zero_preserving, self._optimizers))
            or any(id(w) not in self._grad_handles for w in self._weights)
        )
        if needed and not self._step_handles:
            self._step_handles = [opt.register_step_pre_hook(self._before_step) for opt in self._optimizers]
            self._step_handles += [opt.register_step_post_hook(self._after_step) for opt in self._optimizers]
        elif not needed and self._step_handles:
            for handle in self._step_handles:
                handle.remove()
            self._step_handles = []
        self._stepping_others = {}  # which other optimizers step a masked weight: asked anew

    @property
    def per_step(self) -> bool:
        """Whether the pruned weights are zeroed after every optimizer step (see :meth:`refresh_hooks`)."""
        return bool(self._step_handles)

    def detach(self) -> None:
        """Remove every hook; the masks stay."""
        self._unhook_gradients()
        for handle in self._step_handles + self._load_handles:
            handle.remove()
        self._optimizers, self._optimizer_ids, self._step_handles, self._load_handles = [], [], [], []
        if self._any_step is not None:
            self._any_step.remove()
            _AFTER_ANY_STEP[:] = [entry for entry in _AFTER_ANY_STEP if entry[1] is not self._any_step]
        self._attached, self._any_step = False, None

    def _before_step(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Zero the pruned weights before each further evaluation of the step's closure.

        An optimizer such as ``LBFGS`` moves the weights and evaluates the closure again within
        one step; the reparametrization's forward never sees its moves at pruned entries, so
        neither may this one's. The first evaluation starts from weights zeroed after the last step.
        """
        # `args` starts with the optimizer itself: `step(self, closure=None)`
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            return None
        evaluations = 0

        def masked_closure() -> Any:
            nonlocal evaluations
            if evaluations:
                self._apply_after_step()
            evaluations += 1
            return closure()

        if "closure" in kwargs:
            return args, {**kwargs, "closure": masked_closure}
        return (args[0], masked_closure, *args[2:]), kwargs

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._apply_after_step()

    def _after_any_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After any optimizer's step: note the versions of the weights, whose pruned entries an attached optimizer's
        step kept at zero (by the gradient hooks, or by its own pass after the step, which runs first), so that
        :meth:`zero_written` finds what is written since; zero them after another one's step that moves a masked
        weight (one a module makes and steps itself, whose momentum from before the events moves pruned entries)."""
        if id(optimizer) in self._optimizer_ids:
            self._seen_versions = list(map(_version, self._weights))
            return
        groups = len(optimizer.param_groups)
        ref, seen_groups, steps = self._stepping_others.get(id(optimizer), (None, 0, False))
        if ref is None or ref() is not optimizer or seen_groups != groups:
            masked = set(map(id, self._weights))
            steps = any(id(p) in masked for group in optimizer.param_groups for p in group["params"])
            self._stepping_others[id(optimizer)] = (weakref.ref(optimizer), groups, steps)
        if steps:
            self._apply_after_step()

    def _unhook_gradients(self) -> None:
        for handles in self._grad_handles.values():
            for handle in handles:
                handle.remove()
        self._grad_handles, self._hook_dicts, self._last_keys = {}, [], []

    @torch.no_grad()
    def _zero_state(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the state of the attached zero-preserving optimizers (or of ``optimizer``) at pruned entries."""
        factors = dict(zip(map(id, self._weights), self._factors))
        for opt in self._optimizers if optimizer is None else [optimizer]:
            if not zero_preserving(opt):
                continue  # stepped by its own rules; its weights are zeroed after each step instead
            for param, state in opt.state.items():
                factor = factors.get(id(param))
                if factor is None:
                    continue
                for value in state.values():
                    if isinstance(value, Tensor) and value.is_floating_point() and value.shape == param.shape:
                        value.mul_(factor.to(value.device))

    def to(self, device: torch.device) -> None:
        """Move the masks and their float factors to ``device``."""
        self.masks = {name: mask.to(device) for name, mask in self.masks.items()}
        self._factors = [factor.to(device) for factor in self._factors]
        if self._grad_handles:
            self._unhook_gradients()
            self.refresh_hooks()

    def clear(self) -> None:
        self.detach()
        self.masks, self._params, self._weights, self._factors, self._seen_versions = {}, {}, [], [], []

    def __getstate__(self) -> dict[str, Any]:
        hooks: dict[str, Any] = {"_step_handles": [], "_load_handles": [], "_grad_handles": {}}
        hooks |= {"_hook_dicts": [], "_last_keys": []}
        detached = {
            "_optimizers": [],
            "_optimizer_ids": [],
            "_attached": False,
            "_any_step": None,
            "_stepping_others": {},
        }
        return {**self.__dict__, **hooks, **detached, "_seen_versions": []}
