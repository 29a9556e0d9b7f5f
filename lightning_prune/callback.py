"""``PruningCallback``: the Lightning shell around the pruning core.

It resolves targets in ``setup``, prunes at the end of every training epoch for which the
schedule returns a sparsity, rewinds for lottery-ticket experiments, keeps its masks (bit-packed),
the schedule position and any rewind snapshot in its checkpoint state, writes plain weights into
the checkpoint's ``state_dict``, and removes the reparametrizations at the end of ``fit``.
"""

from __future__ import annotations

import fnmatch
import logging
import numbers
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning, Callback, LearningRateMonitor
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from torch.optim import Optimizer
from typing_extensions import override

from lightning_prune import core, reparam, reporting
from lightning_prune.inplace import InPlaceMasks
from lightning_prune.lottery import Rewind, Snapshot, logical_tensors, reinit_seed, reinitialize, uncovered_by_reset
from lightning_prune.methods import CustomMethod, MethodArg, resolve_method
from lightning_prune.schedules import Schedule, as_schedule
from lightning_prune.serialization import mask_checksum, pack_mask, plain_state_dict, unpack_mask
from lightning_prune.targets import Target, computed_weights, resolve_targets

__all__ = ["PruningCallback"]

log = logging.getLogger("lightning.pytorch.callbacks.pruning")

_SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


class _PlainCheckpointWeights:
    """Stands in for the strategy's ``lightning_module_state_dict``, which Lightning calls for the
    weights of every checkpoint it writes, weights-only ones included (those skip callbacks'
    checkpoint hooks), and returns them plain (``<name> = orig * mask``) for every pruning
    callback of the Trainer. The module's own ``state_dict()`` keeps the reparametrization's
    layout, as in ``torch.nn.utils.prune``. It holds the strategy and the callbacks themselves,
    so a pickled or copied Trainer keeps writing plain checkpoints.
    """

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy
        self.callbacks: list[PruningCallback] = []

    @classmethod
    def install(cls, strategy: Any, callback: PruningCallback) -> None:
        current = strategy.__dict__.get("lightning_module_state_dict")
        if not isinstance(current, cls):
            current = strategy.lightning_module_state_dict = cls(strategy)
            strategy.load_model_state_dict = _CheckpointMasks(current)
        if not any(c is callback for c in current.callbacks):
            current.callbacks.append(callback)

    def __call__(self) -> dict[str, Any]:
        for callback in self.callbacks:  # in a fit, an in_place callback's weights written since its last step
            if callback._inplace is not None and callback._fitting:
                callback._inplace.zero_written()
        state_dict = type(self.strategy).lightning_module_state_dict(self.strategy)
        for callback in self.callbacks:
            plain_state_dict(state_dict, callback._plain_keys(self.strategy.lightning_module))
        return state_dict


class _CheckpointMasks:
    """Stands in for the strategy's ``load_model_state_dict``: when ``validate``/``test``/``predict``
    load a checkpoint into a model this callback masks (a ``fit`` with ``make_permanent=False``
    before), the plain weights are loaded under all-``True`` masks and then masked as the
    checkpoint's callback state says (where it saves none, as a weights-only checkpoint, by the
    zeros of the loaded weights), so the model computes exactly the checkpoint's weights and the
    callback holds the masks that go with them. Masks the checkpoint's weights hold themselves
    (``<name>_mask``, a reparametrized model saved without this callback) stay as loaded; a target
    the checkpoint has no weight for (loaded with ``strict=False``) keeps its weight and mask; a
    load that fails leaves the earlier masks. (A user's own
    ``load_state_dict`` of plain weights keeps the module's masks: a rewind. ``fit`` restores the
    saved masks itself.)
    """

    def __init__(self, weights: _PlainCheckpointWeights) -> None:
        self.weights = weights

    def __call__(self, checkpoint: dict[str, Any], strict: bool = True) -> None:
        strategy = self.weights.strategy
        module = strategy.lightning_module
        if module.trainer.state.fn == TrainerFn.FITTING:
            for callback in self.weights.callbacks:  # Lightning loads the weights before the callbacks' states
                callback._check_resumable(checkpoint, module)
            type(strategy).load_model_state_dict(strategy, checkpoint, strict=strict)
            return
        callbacks = self.weights.callbacks
        weights = checkpoint.get("state_dict", {})
        # a target whose weight the checkpoint lacks (`strict=False`) keeps its weight and mask as they are
        targets = [
            callback._loaded_targets(module, callback._evaluation_targets(module), weights) for callback in callbacks
        ]
        # in_place weights are plain and load as saved; reparametrized ones load under their masks
        hooked = [[] if callback._inplace is not None else t for callback, t in zip(callbacks, targets)]
        earlier = [[mask.clone() for mask in core.current_masks(t)] for t in hooked]
        for callback, t, masks in zip(callbacks, targets, earlier):
            fitted = callback._model() if callback._model is not None else None
            if module is fitted and callback._fitted_masks is None:  # the first evaluation since its fit
                if t:
                    held = masks if callback._inplace is None else core.current_masks(t, callback._inplace.current(t))
                    callback._fitted_masks = {x.qualname: m for x, m in zip(t, held)}
                elif callback._pending_masks is not None:  # kept for the next fit beside plain weights
                    callback._fitted_masks = dict(callback._pending_masks)
        for t in hooked:
            core.commit_masks(t, [core.all_true(x.parameter) for x in t], replace=True)
        try:
            type(strategy).load_model_state_dict(strategy, checkpoint, strict=strict)
        except BaseException:
            for t, masks in zip(hooked, earlier):
                core.commit_masks(t, masks, replace=True)
            for callback, t in zip(callbacks, targets):  # torch copied what matched before it raised
                if callback._inplace is not None and t:
                    callback._inplace.apply()
            raise
        for callback, t in zip(callbacks, targets):
            callback._set_checkpoint_masks(module, t, checkpoint)


def _saves_at_epoch_end(checkpoint: Any, trainer: Trainer) -> bool:
    """Whether ``checkpoint`` (a ``ModelCheckpoint``) saves in ``on_train_epoch_end``, after the epoch's events: by
    its own setting, else where validation does not run or runs once at every epoch's end, as Lightning decides."""
    if getattr(checkpoint, "_every_n_epochs", 0) < 1:
        return False  # saves by steps or time
    setting = getattr(checkpoint, "_save_on_train_epoch_end", None)
    if setting is not None:
        return bool(setting)
    if trainer.check_val_every_n_epoch != 1 or getattr(trainer, "_val_check_time_interval", None) is not None:
        return False
    if not trainer.enable_validation:  # no loader, no `validation_step` or no batches
        return True  # saved at the epoch's end
    return getattr(trainer, "val_check_interval", 1.0) == 1.0


def _prunes(value: object) -> bool:
    """Whether a schedule's ``value`` is a sparsity above 0 (a later epoch's, unchecked: a bad one fails when asked)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value) > 0


def _skips_epoch_start(trainer: Trainer) -> bool:
    """In ``on_train_start``: whether Lightning runs no ``on_train_epoch_start`` for the current epoch, as after a
    resume from within an epoch or from its last batch before its end."""
    loop: Any = trainer.fit_loop
    return bool(loop.restarted_mid_epoch or loop.restarted_on_epoch_end)


def _has_started(trainer: Trainer, epoch: int) -> bool:
    """In ``on_train_start``: whether training of ``epoch`` started before (in the run that wrote the checkpoint)."""
    loop: Any = trainer.fit_loop
    return loop.epoch_progress.current.started > epoch


def _has_comm_hooks(trainer: Trainer) -> bool:
    """Whether the DDP model has a communication hook, which may change gradient values after backward has
    masked them (PowerSGD); registered before training or since (in the LightningModule's ``on_train_start``)."""
    return bool(getattr(trainer.strategy.model, "_comm_hooks", None))


def _averaging_callbacks(trainer: Trainer, *, swa: bool = False) -> list[Any]:
    """The Trainer's ``WeightAveraging`` callbacks (``EMAWeightAveraging``), or its ``StochasticWeightAveraging``
    ones (``swa``), matched by class name: older Lightning versions have no ``WeightAveraging``."""
    names = {"StochasticWeightAveraging"} if swa else {"WeightAveraging"}
    return [c for c in trainer.callbacks if names & {cls.__name__ for cls in type(c).__mro__}]  # type: ignore[attr-defined]


def _renamed_finetuning_state(state: Any, rename: Callable[[str], str]) -> Any:
    """A copy of a ``BaseFinetuning`` state (its optimizers' parameter groups by parameter name) with every name
    passed through ``rename``; the state as it is where it has another layout."""
    try:
        metadata = state["internal_optimizer_metadata"]
        renamed = {
            i: [{**group, "params": [rename(name) for name in group["params"]]} for group in groups]
            for i, groups in metadata.items()
        }
    except (KeyError, TypeError, AttributeError):
        return state
    return {**state, "internal_optimizer_metadata": renamed}


def _parameter_names(module: nn.Module) -> dict[str, str]:
    """Each parameter's name in ``module.named_parameters()``, keyed by that name with a reparametrized tensor's
    ``<name>_orig`` read as ``<name>`` (its name in a checkpoint, and before and after pruning)."""
    names = {}
    for qualname, _ in module.named_parameters():
        prefix, _, name = qualname.rpartition(".")
        owner = module.get_submodule(prefix) if prefix else module
        pruned = name.endswith("_orig") and name[: -len("_orig")] + "_mask" in owner._buffers
        names[qualname[: -len("_orig")] if pruned else qualname] = qualname
    return names


def _learning_rates(trainer: Trainer) -> list[list[Any]]:
    return [[group.get("lr") for group in optimizer.param_groups] for optimizer in trainer.optimizers]


def _finetuning_renamer(module: nn.Module, *, plain: bool) -> Callable[[str], str]:
    """Maps a parameter name that ``BaseFinetuning`` recorded (plain, or ``<name>_orig`` of a tensor reparametrized
    then) to the name ``module`` gives that parameter now, or to its plain name (``plain``); other names as they
    are."""
    current = _parameter_names(module)  # plain name -> the name now
    plain_of = {now: name for name, now in current.items()}

    def rename(name: str) -> str:
        if name.endswith("_orig") and name not in plain_of and name[: -len("_orig")] in current:
            name = name[: -len("_orig")]  # reparametrized when recorded, plain now
        name = plain_of.get(name, name)
        return name if plain else current.get(name, name)

    return rename


def _pruning_callbacks(trainer: Trainer) -> list[PruningCallback]:
    """The Trainer's pruning callbacks, in its order."""
    return [c for c in trainer.callbacks if isinstance(c, PruningCallback)]  # type: ignore[attr-defined]


def _keys_by_target(pl_module: LightningModule, targets: Sequence[Target]) -> list[list[str]]:
    """Each target's state-dict keys in ``pl_module``, under every prefix of every module that holds it."""
    prefixes: dict[int, list[str]] = {}
    for prefix, module in pl_module.named_modules(remove_duplicate=False):
        prefixes.setdefault(id(module), []).append(f"{prefix}." if prefix else "")
    return [[p + name for module, name in t.holders for p in prefixes.get(id(module), [])] for t in targets]


def _refresh_masked_weights(trainer: Trainer | None, targets: Sequence[Target], by: PruningCallback) -> None:
    """Recompute the masked weights of ``targets`` that a reparametrization (another callback's, or torch's)
    computes from tensors ``by`` just wrote, so they show the new values before any forward; the other
    callbacks' checks of their masked weights (see ``_arm_refresh_check``) follow the new tensors."""
    for target in targets:
        for module, name in target.holders:
            if reparam.find_hook(module, name) is not None:
                reparam.refresh(module, name)
    for other in _pruning_callbacks(trainer) if trainer is not None else []:
        if other is not by and other._unrefreshed:
            other._arm_refresh_check()


class PruningCallback(Callback):
    """Prune a LightningModule while it trains.

    Args:
        method: ``"l1_unstructured"``, ``"random_unstructured"``, ``"ln_structured"``,
            ``"random_structured"``, a subclass of ``torch.nn.utils.prune.BasePruningMethod``,
            or its import path (as YAML writes it).
        schedule: a :class:`~lightning_prune.schedules.Schedule`, or a number ``s`` meaning
            ``Constant(s)``: one event, after epoch 0.
        scope: ``"layer"``: every targeted tensor reaches the sparsity; ``"global"``: all
            targeted tensors together reach it (structured methods then rank slices by their
            size-normalised norm, see :class:`~lightning_prune.methods.LnStructured`).
        targets: fnmatch patterns over qualified parameter names; default: the ``weight`` of
            every ``Linear`` and ``Conv1d/2d/3d``.
        exclude: patterns taken out of ``targets`` (``None``: none).
        dim: the slice dimension of the structured methods (``None``: 0). A custom ``method``
            whose ``__init__`` takes ``dim`` gets it if given, else keeps its own default.
        norm: the Ln norm of ``ln_structured``: what torch's ``ln_structured`` takes as ``n`` (a real
            number, ``"inf"``, ``"-inf"`` or ``"fro"``; ``None``: 2). A custom ``method`` whose
            ``__init__`` takes ``n`` gets it as given, else keeps its own default.
        rewind: a :class:`~lightning_prune.Rewind` for lottery-ticket experiments.
        make_permanent: at the end of ``fit``, remove every reparametrization (plain
            parameters with zeros where pruned). With ``masking="in_place"`` the weights are
            plain all along: ``False`` keeps no masking on the model after ``fit`` either.
        log_per_layer: log ``sparsity/<name>`` for every target besides ``sparsity/global``
            (``sparsity/<method>/...`` when the Trainer has several pruning callbacks, numbered
            ``<method>_1``, ``<method>_2`` in its order where two share a method).
        seed: seed of the random methods and of ``Rewind(reinit=True)``, an int in
            ``[-2**63, 2**64)``; ``None`` takes one from torch's global RNG on rank 0, without
            advancing it (a fit's dropout and batch order stay as without the callback), and
            shares it with every rank: anew for each Trainer that fits with the callback, the
            same for fits with one Trainer and for a resume (the checkpoint holds it).
        masking: ``"reparametrize"``: the layout of ``torch.nn.utils.prune`` (``<name>_orig``,
            a bool ``<name>_mask`` buffer, a forward pre-hook); ``"in_place"``: weights stay
            plain parameters, the callback keeps the masks, zeroes pruned entries' gradients as
            backward produces them and keeps the pruned weights at zero (less memory and time
            per step, see :mod:`lightning_prune.inplace`). Weights, checkpoints, logging, DDP
            checks and rewinding are the same in both.

    Several callbacks may prune one model (per-layer rates, say) if they differ in ``method``,
    ``scope``, ``targets`` or ``exclude``: these name each one's state in checkpoints.

    Example:
        >>> from lightning_prune.schedules import Polynomial
        >>> PruningCallback(method="l1_unstructured", scope="global",
        ...                 schedule=Polynomial(final_sparsity=0.9, start_epoch=0, end_epoch=7))
        PruningCallback(method='l1_unstructured', scope='global', schedule=Polynomial(...))
    """

    def __init__(
        self,
        method: MethodArg = "l1_unstructured",
        schedule: Schedule | float = 0.5,
        scope: Literal["layer", "global"] = "layer",
        targets: list[str] | None = None,
        exclude: Sequence[str] | None = (),
        dim: int | None = None,
        norm: int | float | str | None = None,
        rewind: Rewind | None = None,
        make_permanent: bool = True,
        log_per_layer: bool = True,
        seed: int | None = None,
        masking: Literal["reparametrize", "in_place"] = "reparametrize",
    ) -> None:
        self._method = resolve_method(method, dim=dim, norm=norm)
        self.method_name = self._method.name
        self.schedule = as_schedule(schedule)
        if scope not in ("layer", "global"):
            raise ValueError(f"Expected `scope` to be 'layer' or 'global', got {scope!r}")
        self.scope: Literal["layer", "global"] = scope
        self._method.check_scope(scope)
        for arg, value in (("targets", targets), ("exclude", exclude)):
            if value is not None and (isinstance(value, str) or not all(isinstance(p, str) for p in value)):
                raise ValueError(f"Expected `{arg}` to be a list of name patterns, got {value!r}")
        self.target_patterns = None if targets is None else list(targets)
        self.exclude = [] if exclude is None else list(exclude)
        if isinstance(rewind, dict):
            unknown = sorted(set(rewind) - {"epoch", "reinit"})
            if unknown:
                raise ValueError(f"Expected `rewind` to have the keys 'epoch' and 'reinit', got unknown keys {unknown}")
            rewind = Rewind(**rewind)
        if rewind is not None and not isinstance(rewind, Rewind):
            raise ValueError(f"Expected `rewind` to be a Rewind(epoch=..., reinit=...) or None, got {rewind!r}")
        self.rewind = rewind
        ignored = [
            a for a, v, p in (("dim", dim, "dim"), ("norm", norm, "n")) if v is not None and p not in self._method.takes
        ]
        if ignored:
            rank_zero_warn(f"`method={self.method_name!r}` takes no {' or '.join(f'`{a}`' for a in ignored)}: ignored")
        for arg, flag in (("make_permanent", make_permanent), ("log_per_layer", log_per_layer)):
            if not isinstance(flag, bool):
                raise ValueError(f"Expected `{arg}` to be True or False, got {flag!r}")
        self.make_permanent, self.log_per_layer = make_permanent, log_per_layer
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -(2**63) <= seed < 2**64
        ):
            raise ValueError(f"Expected `seed` to be None or an int in [-2**63, 2**64) (torch's seeds), got {seed!r}")
        self.seed: int | None = None if seed is None else int(seed)
        self._given_seed = self.seed  # `None`: drawn at each new Trainer's fit
        if masking not in ("reparametrize", "in_place"):
            raise ValueError(f"Expected `masking` to be 'reparametrize' or 'in_place', got {masking!r}")
        self.masking = masking
        self._inplace = InPlaceMasks() if masking == "in_place" else None

        self._targets: list[Target] = []
        self._done_epoch = -1  # the last epoch whose end was handled
        self._round = 0  # pruning events that changed a mask
        self._rewind_pending = False  # an event changed a mask; the last pruning callback runs the rewind
        self._restate_epoch: int | None = None  # the epoch at whose start the snapshot's optimizer states return
        self._snapshot_recheck = False  # a snapshot just taken: its first step takes replaced optimizers anew
        # the epoch of the last validation run (not the sanity check) and, with a rewind, its `val*` metrics
        self._validated: tuple[int, dict[str, float]] = (-1, {})
        self._metrics_before: dict[str, Any] = {}  # `callback_metrics` as the running validation started
        self._stateless_resume = False  # resuming from a checkpoint without this callback's state
        self._trained = False  # whether this fit reached `on_train_start`
        self._fitting = False  # from `on_fit_start` to the end of the fit
        self._snapshot: Snapshot | None = None
        self._pending_masks: dict[str, Tensor] | None = None  # to apply in on_fit_start
        self._pending_targets: list[str] | None = None  # the targets they were saved for (None: those of the masks)
        # the last fit's model's masks before its first evaluation of a checkpoint (see `_set_checkpoint_masks`)
        self._fitted_masks: dict[str, Tensor] | None = None
        # a checkpoint evaluated now, before Lightning loads its state of this callback: "masks set" on the
        # last fit's model already, or of "another model", whose state is not this callback's run's
        self._evaluated: str | None = None
        self._trainer: weakref.ref[Trainer] | None = None  # of the current or last fit
        self._model: weakref.ref[LightningModule] | None = None
        self._state_key: tuple[tuple[Any, ...], str] | None = None
        # each reparametrized target's masked weights as last committed, until a training batch ends
        self._unrefreshed: dict[str, list[tuple[Any, str, weakref.ref[Tensor]]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # weak references do not pickle; the masks of the last fit's model go with it
        dropped: dict[str, Any] = {"_trainer": None, "_model": None, "_unrefreshed": {}, "_fitted_masks": None}
        return {**self.__dict__, **dropped}

    def __repr__(self) -> str:
        schedule = f"{type(self.schedule).__name__}(...)"
        return f"{type(self).__name__}(method={self.method_name!r}, scope={self.scope!r}, schedule={schedule})"

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads this around every hook call (profiler names); build the string once per identity
        exclude = tuple(getattr(self, "exclude", ()))
        targets = None if self.target_patterns is None else tuple(self.target_patterns)
        identity = (self.method_name, self.scope, targets, exclude)
        cached = getattr(self, "_state_key", None)  # absent from callbacks pickled by earlier versions
        if cached is None or cached[0] != identity:
            cached = self._state_key = (identity, self._key(exclude=list(exclude)))
        return cached[1]

    def _key(self, exclude: list[str]) -> str:
        # `exclude` joins the key only when given: the keys of checkpoints written without it stay the same
        extra = {"exclude": exclude} if exclude else {}
        targets = self.target_patterns
        return self._generate_state_key(method=self.method_name, scope=self.scope, targets=targets, **extra)

    @property
    def targets(self) -> list[Target]:
        """The resolved targets of the current ``fit`` (empty before ``on_fit_start``)."""
        return list(self._targets)

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _PlainCheckpointWeights.install(trainer.strategy, self)  # for a checkpoint evaluated after a fit, too
        self._evaluated = None  # Lightning loads checkpoints after this hook
        if stage != "fit":
            return
        self._stateless_resume = False  # until a checkpoint without this callback's state is loaded
        self._snapshot_recheck = False
        strategy = type(trainer.strategy).__name__
        if any(cls.__name__ in _SHARDED for cls in type(trainer.strategy).__mro__):
            raise NotImplementedError(
                f"PruningCallback does not support the sharded strategy {strategy} yet: masks would be computed on "
                f"shards. Use a data-parallel strategy ('ddp', 'ddp_spawn', 'auto')."
            )
        try:  # early, before a checkpoint or a tuner changes the weights
            self._resolve_targets(pl_module)
        except ValueError:
            if not any(is_overridden(hook, pl_module, LightningModule) for hook in ("setup", "configure_model")):
                raise
            # the module's own `setup` or `configure_model`, which Lightning calls after this hook, may
            # build what the patterns name: `on_fit_start` resolves them again, errors included
        self._check_schedule(trainer)
        self._check_repeat(trainer)
        self._check_rewind(trainer)
        checkpoints = trainer.checkpoint_callbacks if self.rewind is not None else []
        monitored = [m for c in checkpoints if (m := getattr(c, "monitor", None)) and _saves_at_epoch_end(c, trainer)]
        if monitored:
            rank_zero_warn(
                f"`rewind={self.rewind}`: a checkpoint saved at the end of an epoch with a pruning event is written "
                f"after the rewind, so it holds the rewound weights (with the new masks) under the score of the "
                f"trained ones ({monitored[0]!r}); take the round's trained network from a checkpoint saved at "
                f"validation end (`save_on_train_epoch_end=False`) or before the event"
            )

        self._fitting = False  # an earlier fit may have ended without our `on_exception`
        self._validated = (-1, {})  # a resumed fit's comes with the checkpoint's state, loaded after this
        same_model = self._model is not None and self._model() is pl_module
        if not same_model:
            self._pending_masks, self._pending_targets, self._snapshot = None, None, None  # they are another model's
        if self._trainer is None or self._trainer() is not trainer:
            self._done_epoch, self._round, self._snapshot, self._rewind_pending = -1, 0, None, False
            self._restate_epoch = None
            self.seed = getattr(self, "_given_seed", self.seed)  # a callback pickled earlier keeps its seed
        if same_model and self._pending_masks is None:
            self._keep_masks()
        if self._inplace is not None:
            self._inplace.clear()
        self._trainer, self._model = weakref.ref(trainer), weakref.ref(pl_module)
        self._targets = []  # resolved in `on_fit_start`, after `LightningModule.setup` and `configure_model`
        if self.seed is None:
            self.seed = int(trainer.strategy.broadcast(self._draw_seed(trainer), src=0))

    def _draw_seed(self, trainer: Trainer) -> int:
        """A seed from torch's global RNG that leaves it where it was, one of its own for each callback.

        Drawing would shift every later draw: the dropout masks and batch order of a fit would
        change with the callback added, before any pruning.
        """
        callbacks = _pruning_callbacks(trainer)
        index = next((i for i, c in enumerate(callbacks) if c is self), 0)
        with torch.random.fork_rng(devices=[]):
            return int(torch.randint(0, 2**31 - 1, (index + 1,), device="cpu")[index])  # whatever the default device

    def _resolve_targets(self, pl_module: LightningModule) -> list[Target]:
        targets = resolve_targets(pl_module, self.target_patterns, self.exclude)
        meta = [t.qualname for t in targets if t.parameter.is_meta]
        if meta:
            raise ValueError(f"Targets {meta} are on the meta device (not materialized): they hold no values to prune")
        for target in targets:
            self._method.check_target(target.qualname, target.parameter.shape)
            for module, name in target.holders if self._inplace is None else ():
                try:  # what the reparametrization needs, which the first event would find out
                    reparam.check(module, name)
                except ValueError as error:
                    raise ValueError(f"Target {target.qualname!r}: {error} (`exclude` it)") from None
        return targets

    def _target(self, epoch: int) -> float | None:
        """The schedule's target after ``epoch``: a sparsity in [0, 1], or ``None`` for no event."""
        value = self.schedule.sparsity_at(epoch)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
            raise ValueError(
                f"`schedule` {self.schedule!r} returned {value!r} for epoch {epoch}; expected a sparsity in [0, 1] "
                f"or None"
            )
        return float(value)

    @staticmethod
    def _fit_epochs(trainer: Trainer) -> range:
        """Every epoch this fit can run (the first 1,000, Lightning's default, when only steps or time bound it)."""
        max_epochs = trainer.max_epochs
        return range(max_epochs if isinstance(max_epochs, int) and max_epochs >= 0 else 1000)

    def _check_schedule(self, trainer: Trainer) -> None:
        """Ask the schedule for every epoch this fit can run, so a bad value fails before training; warn where
        ``max_epochs`` ends the fit before the schedule's last event."""
        targets = [self._target(epoch) for epoch in self._fit_epochs(trainer)]
        max_epochs = trainer.max_epochs
        if not isinstance(max_epochs, int) or max_epochs <= 0:
            return  # bound by steps or time, or not at all: the last epoch is not known
        last = self.schedule.last_epoch()
        reached = max((t for t in targets if t is not None), default=None)
        final = self._target(last) if last is not None else None
        if last is not None and last >= max_epochs and (final or 0.0) > (reached or 0.0):
            rank_zero_warn(
                f"`schedule` {self.schedule!r} ends with its event after epoch {last} (to {final}), but this fit "
                f"stops after epoch {max_epochs - 1} (`max_epochs={max_epochs}`): it reaches "
                + ("no event" if reached is None else f"at most a target of {reached}")
                + f"; raise `max_epochs` to above {last} to run the whole schedule"
            )
        elif (
            last is None and not reached and any(map(_prunes, map(self.schedule.sparsity_at, range(max_epochs, 1000))))
        ):
            rank_zero_warn(
                f"`schedule` {self.schedule!r} has no event that prunes within this fit's {max_epochs} epochs "
                f"(`max_epochs={max_epochs}`); its first comes later"
            )

    def _check_repeat(self, trainer: Trainer) -> None:
        """A structured custom method without a ``dim`` prunes a tensor once; refuse a schedule that asks more."""
        method = self._method
        if not isinstance(method, CustomMethod) or method.pruning_type != "structured":
            return
        if method.instance_dim() is not None:
            return
        # an event to sparsity 0 prunes nothing (a ramp's first); any other may call the method again,
        # even one at the sparsity reached, since whole slices can fall short of its count
        events = [e for e in self._fit_epochs(trainer) if self._target(e)]
        if len(events) > 1:
            raise ValueError(
                f"`method={method.cls.__name__}` is structured and its instances have no `dim`, so it can prune a "
                f"tensor once (torch.nn.utils.prune slices by `dim` to prune again), but `schedule` has events "
                f"after epochs {events[:5]}{'...' if len(events) > 5 else ''}; set `self.dim` or give one event"
            )

    def _check_rewind(self, trainer: Trainer) -> None:
        if self.rewind is None:
            return
        early = [e for e in range(self.rewind.epoch) if self._target(e)]  # one to sparsity 0 prunes nothing
        if early:
            raise ValueError(
                f"`rewind=Rewind(epoch={self.rewind.epoch})` rewinds to the start of epoch {self.rewind.epoch}, but "
                f"`schedule` prunes after epoch {early[0]}, before that snapshot exists; "
                f"start the schedule at epoch >= {self.rewind.epoch}"
            )
        events = {e for e in self._fit_epochs(trainer) if self._target(e)}
        for other in _pruning_callbacks(trainer):
            if other.rewind is None or other.rewind.epoch == self.rewind.epoch:
                continue
            both = sorted(events & {e for e in other._fit_epochs(trainer) if other._target(e)})
            if both:  # each restores the whole model at the end of that epoch: the last one listed would win
                raise ValueError(
                    f"Two pruning callbacks rewind to different epochs ({self.rewind.epoch} and {other.rewind.epoch}) "
                    f"after the same epoch's events (epoch {both[0]}); every rewind restores the whole model, "
                    f"optimizers and schedulers: give them one `Rewind.epoch`, or events in different epochs"
                )

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning calls the callbacks' `setup` before the module's `setup` and `configure_model`,
        # where layers may be built; this hook comes after both, and before any training.
        self._targets = self._resolve_targets(pl_module)
        self._check_weight_averaging(trainer)
        self._warn_averages_not_rewound(trainer)
        computed = computed_weights(pl_module) if self.target_patterns is None else {}
        if computed:
            rank_zero_warn(
                f"The default targets leave out {sorted(computed)}: computed from other parameters "
                f"(torch.nn.utils.parametrize, weight_norm, spectral_norm), they are no parameters to prune; "
                f"name what to prune in `targets`, from {sorted(n for names in computed.values() for n in names)}"
            )
        if self.exclude:
            try:
                selected = self._plain_keys(pl_module, resolve_targets(pl_module, self.target_patterns))  # every name
            except ValueError:
                selected = None  # what `exclude` takes out cannot be resolved (a lazy layer): it takes that out
            idle = [p for p in self.exclude if not any(fnmatch.fnmatchcase(q, p) for q in selected or ())]
            if selected is not None and idle:
                rank_zero_warn(f"`exclude` patterns {idle} match no target (of {selected}): they take nothing out")
        if self.rewind is not None and self.rewind.reinit:
            uncovered = uncovered_by_reset(pl_module, [t.qualname for t in self._targets])
            if uncovered:
                raise ValueError(
                    f"`rewind={self.rewind}` re-samples the surviving weights with their modules' "
                    f"`reset_parameters`, but no module that holds targets {uncovered} has one (a bare "
                    f"`nn.Parameter`?): they would keep their values. Give their module a `reset_parameters` "
                    f"or leave them out with `exclude`"
                )
        self._fitting, self._trained, self._fitted_masks = True, False, None
        if self._snapshot is not None:  # one loaded from a checkpoint sits where it was saved from
            self._snapshot = self._snapshot.to(pl_module.device)
        self._restore_pending()
        self._rename_finetuning_groups(trainer, pl_module)

    def _rename_finetuning_groups(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Name the parameters in the state of a resuming ``BaseFinetuning`` (``BackboneFinetuning``) as the model
        names them now, in case the masks just set renamed them: its ``on_fit_start``, later in the callbacks'
        order, looks its parameter groups up by name (see :meth:`on_load_checkpoint` for the earlier ones)."""
        rename = _finetuning_renamer(pl_module, plain=False)
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, BaseFinetuning) and getattr(callback, "_restarting", False):
                callback.load_state_dict(_renamed_finetuning_state(callback.state_dict(), rename))

    @staticmethod
    def _rename_finetuning_states(
        trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any], *, plain: bool
    ) -> None:
        """Rename the parameters in the checkpoint's ``BaseFinetuning`` states (see :func:`_finetuning_renamer`)."""
        states = checkpoint.get("callbacks", {})
        rename = _finetuning_renamer(pl_module, plain=plain)
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, BaseFinetuning) and callback.state_key in states:
                states[callback.state_key] = _renamed_finetuning_state(states[callback.state_key], rename)

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # the plain names, as the checkpoint's weights: `BaseFinetuning` records them by name, as the model had
        # them when it changed its parameter groups (before or after a pruning event, or after `fit`)
        self._rename_finetuning_states(trainer, pl_module, checkpoint, plain=True)

    def _warn_averages_not_rewound(self, trainer: Trainer) -> None:
        averaging = [type(c).__name__ for c in _averaging_callbacks(trainer) + _averaging_callbacks(trainer, swa=True)]
        if self.rewind is not None and averaging:
            rank_zero_warn(
                f"`rewind={self.rewind}` rewinds the model, not the averages of {averaging[0]}: they span the rounds, "
                f"and so do the validation, checkpoints and final weights it makes of them"
            )

    def _check_weight_averaging(self, trainer: Trainer) -> None:
        """Refuse reparametrizing beside a ``WeightAveraging`` callback (``EMAWeightAveraging``).

        Its averaged copy of the model, made at ``setup``, is paired with the model parameter by parameter
        and buffer by buffer: the mask buffers added since would shift the model's other buffers out of line
        (or fail its strict pairing, with ``use_buffers=False``), and masks already in the copy (a model
        pruned before) would be averaged, and their average copied back over this fit's masks.
        """
        averaging = _averaging_callbacks(trainer)
        if self._inplace is None and averaging:
            raise ValueError(
                f"`masking='reparametrize'` keeps a `<name>_mask` buffer per target, and {type(averaging[0]).__name__} "
                f"pairs the model's parameters and buffers with those of its averaged copy, made before the masks: "
                f"it would mix masks and other buffers. Use `masking='in_place'`, which adds no buffers"
            )

    def _restore_pending(self) -> None:
        """Set the masks loaded from a checkpoint (or kept from the last fit), as saved, if any."""
        if self._pending_masks is None:
            return
        masks, self._pending_masks = self._pending_masks, None
        if not masks:  # saved before the first event: nothing is pruned there, whatever this model holds now
            self._unprune()
            return
        saved_targets, self._pending_targets = self._pending_targets, None
        self._check_saved_masks({name: tuple(mask.shape) for name, mask in masks.items()}, self._targets, saved_targets)
        # restored as saved: the model that wrote the checkpoint may hold later masks by now. A target saved without
        # a mask (reparametrized, never pruned while another callback pruned one it shares) is unpruned there.
        targets = [t for t in self._targets if t.qualname in masks or t.mask is not None]
        saved = [masks[t.qualname] if t.qualname in masks else core.all_true(t.parameter) for t in targets]
        self._commit(saved, targets, replace=True)

    def _check_saved_masks(
        self, shapes: dict[str, tuple[int, ...]], targets: Sequence[Target], saved_targets: Sequence[str] | None
    ) -> None:
        """Raise where masks saved with these shapes, by target name, for the targets ``saved_targets`` (``None``:
        not recorded, those of the masks), do not fit ``targets``."""
        names = sorted(t.qualname for t in targets)
        expected = sorted(shapes) if saved_targets is None else sorted(saved_targets)
        if expected != names or not set(shapes) <= set(names):
            raise ValueError(
                f"The saved pruning masks are for targets {expected}, but this model's targets are "
                f"{names}; resume with the same model and `targets`/`exclude`"
            )
        wrong = [
            f"{t.qualname}: saved {shapes[t.qualname]}, model {tuple(t.parameter.shape)}"
            for t in targets
            if t.qualname in shapes and shapes[t.qualname] != tuple(t.parameter.shape)
        ]
        if wrong:
            raise ValueError(f"The saved pruning masks do not fit the model's parameters: {wrong}")

    def _saved_state(self, checkpoint: dict[str, Any]) -> dict[str, Any] | None:
        """This callback's state in ``checkpoint`` (also under its key from before ``exclude`` was part of it)."""
        saved = checkpoint.get("callbacks", {})
        return saved.get(self.state_key, saved.get(self._key(exclude=[])) if self.exclude else None)

    def _check_resumable(self, checkpoint: dict[str, Any], pl_module: LightningModule) -> None:
        """Raise what resuming from ``checkpoint`` would raise in this callback's ``load_state_dict`` and
        ``on_fit_start``, before ``pl_module`` takes the checkpoint's weights."""
        state = self._saved_state(checkpoint)
        if not state:
            return
        self._check_saved_rewind(state)
        masks = state.get("masks", {})
        if masks:
            shapes = {name: tuple(m["shape"]) for name, m in masks.items()}
            self._check_saved_masks(shapes, self._resolve_targets(pl_module), state.get("targets"))

    def _unprune(self) -> None:
        """All-``True`` masks wherever a target holds one (a model that pruned in an earlier fit)."""
        if self._inplace is not None:
            if self._inplace.masks:  # `setup` clears them; a state loaded back within a fit does not
                ones = [torch.ones_like(t.parameter, dtype=torch.bool) for t in self._targets]
                self._inplace.commit(self._targets, ones, replace=True)
            return
        pruned = [t for t in self._targets if t.mask is not None]
        core.commit_masks(pruned, [torch.ones_like(t.parameter, dtype=torch.bool) for t in pruned], replace=True)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._trained = True
        if self._inplace is not None:
            self._inplace.attach(trainer.optimizers, per_step=_has_comm_hooks(trainer))
        self._check_snapshot_fits(trainer, pl_module)
        self._check_swa_start(trainer)
        self._check_scheduler_frequency(trainer)
        # Run any event that the restored position says was missed (a checkpoint written after an epoch's
        # last batch but before this callback's event at its end, by a callback listed before it, say).
        missed = range(self._done_epoch + 1, trainer.current_epoch)
        if self._stateless_resume and trainer.current_epoch > 0:
            events = [e for e in missed if self._target(e) is not None]
            if events:
                rank_zero_warn(
                    f"The checkpoint resumed from holds no state of this callback (was it written without it?): "
                    f"the events after epochs {events}, all before epoch {trainer.current_epoch} where the fit "
                    f"resumes, run now, one after another"
                )
        self._stateless_resume = False
        for epoch in missed:
            self._end_of_epoch(trainer, pl_module, epoch)
        self._rewind_all(trainer, pl_module)  # for the missed events of every pruning callback, once all ran
        # Such a resume (its checkpoint written at the last batch of the epoch before) enters this epoch
        # without `on_train_epoch_start`: take a snapshot due there now. Not for a checkpoint written
        # within this epoch, which a snapshot due at its start would come from.
        if _skips_epoch_start(trainer) and not _has_started(trainer, trainer.current_epoch):
            self._take_snapshot(trainer, pl_module)
        self._check_snapshot_due(trainer)

    def _check_snapshot_fits(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Refuse, before training, a rewind snapshot (restored from a checkpoint) that a later event could not
        restore: one written with other optimizers or schedulers, say."""
        if self.rewind is None or self._snapshot is None:
            return
        if not self._rewind_pending and not any(
            self._target(e) is not None for e in self._fit_epochs(trainer) if e > self._done_epoch
        ):
            return  # nothing left to rewind after
        # StochasticWeightAveraging, resumed past its start, drops the LR schedulers and makes its own at the next
        # epoch start it sees: they are checked at the events, if that start comes before the next one
        swa = any(c.swa_start <= trainer.current_epoch for c in _averaging_callbacks(trainer, swa=True))
        events = [e for e in self._pruning_events(trainer) if e > self._done_epoch]  # the missed ones included
        replaced = swa and (not _skips_epoch_start(trainer) or not events or events[0] > trainer.current_epoch)
        self._check_snapshot(
            trainer,
            pl_module,
            ": the snapshot restored from the checkpoint does not fit this run. ",
            schedulers=not replaced,
        )

    def _pruning_events(self, trainer: Trainer) -> list[int]:
        """The epochs of this fit whose event targets more than every event before it: each prunes, and rewinds."""
        events, reached = [], 0.0
        for epoch in self._fit_epochs(trainer):
            target = self._target(epoch) or 0.0
            if target > reached:
                events.append(epoch)
                reached = target
        return events

    def _check_snapshot_due(self, trainer: Trainer) -> None:
        """Refuse, before training, a run resumed past the start of the rewind's epoch from a checkpoint without
        a snapshot (written without rewinding), while an event would still prune: it would fail there."""
        if self.rewind is None or self._snapshot is not None:
            return
        if not _has_started(trainer, self.rewind.epoch):
            return  # its `on_train_epoch_start` takes the snapshot
        later = [e for e in self._pruning_events(trainer) if e > self._done_epoch]
        if later:
            raise RuntimeError(
                f"`rewind={self.rewind}`: the checkpoint resumed from holds no snapshot (was it written without "
                f"rewinding?) and this run resumes past the start of epoch {self.rewind.epoch}, so the event after "
                f"epoch {later[0]} would have nothing to rewind to; resume from a checkpoint written with this "
                f"`rewind`, or start the fit anew"
            )

    def _check_swa_start(self, trainer: Trainer) -> None:
        """Refuse, before training, a rewind to an epoch before ``StochasticWeightAveraging`` starts while an
        event would prune from then on: it replaces the LR scheduler there, and the snapshot's could not be
        restored into the new one."""
        if self.rewind is None:
            return
        for callback in _averaging_callbacks(trainer, swa=True):
            start, skipped = callback.swa_start, ""  # 0-based, since its `on_fit_start`
            if self._snapshot is None and self.rewind.epoch >= trainer.current_epoch and start <= trainer.current_epoch:
                # it makes its scheduler at the next epoch start it sees, again if resumed past its start
                start = trainer.current_epoch
                if _skips_epoch_start(trainer):
                    start, skipped = start + 1, f" (this resume skips the start of epoch {start})"
            if start <= self.rewind.epoch:
                continue
            later = [e for e in self._pruning_events(trainer) if e >= start and e > self._done_epoch]
            if later:
                raise ValueError(
                    f"`rewind={self.rewind}` restores the LR scheduler of epoch {self.rewind.epoch}'s start, but "
                    f"StochasticWeightAveraging replaces it at the start of epoch {start}{skipped}, before the event "
                    f"after epoch {later[0]}; "
                    + (
                        "resume from a checkpoint written at an epoch's end"
                        if skipped
                        else f"start it at or before the rewind epoch (`swa_epoch_start={self.rewind.epoch + 1}`), "
                        f"or rewind to an epoch after it starts"
                    )
                )

    def _check_scheduler_frequency(self, trainer: Trainer) -> None:
        """Warn where a round cannot replay an epoch-interval LR scheduler of ``frequency`` f > 1: Lightning steps
        it after epoch ``j`` when ``(j + 1) % f == 0``, and a round that starts at epoch ``e + 1`` in place of
        ``k`` keeps that pattern only when ``e + 1 - k`` is a multiple of f."""
        if self.rewind is None:
            return
        k = self.rewind.epoch
        last = trainer.max_epochs - 1 if isinstance(trainer.max_epochs, int) else None  # no round follows it here
        # a resumed fit trains the round after the event at `_done_epoch`
        events = [e for e in self._pruning_events(trainer) if e >= max(k, self._done_epoch) and e != last]
        for config in trainer.lr_scheduler_configs:
            f = config.frequency
            if config.interval != "epoch" or f <= 1:
                continue
            off = [e for e in events if (e + 1 - k) % f]
            if off:
                rank_zero_warn(
                    f"`rewind={self.rewind}` restores the LR scheduler {type(config.scheduler).__name__}, which "
                    f"Lightning steps every {f} epochs (after epochs j with (j + 1) % {f} == 0), so the rounds after "
                    f"the events after epochs {off[:5]} step it at other points of the round than epoch {k}'s run "
                    f"did; place the events so that (event + 1 - {k}) % {f} == 0 for each"
                )

    def _check_snapshot(
        self, trainer: Trainer, pl_module: LightningModule, before: str, after: str = "", *, schedulers: bool = True
    ) -> None:
        """:meth:`Snapshot.check` (of the LR schedulers too, if ``schedulers``), its error raised again as
        ``rewind=...<before><error><after>``."""
        assert self.rewind is not None and self._snapshot is not None
        try:
            self._snapshot.check(pl_module, trainer.optimizers, self._schedulers(trainer) if schedulers else None)
        except RuntimeError as err:
            raise RuntimeError(f"`rewind=Rewind(epoch={self.rewind.epoch})`{before}{err}{after}") from err

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._rewind_pending:  # one a checkpoint written between two pruning callbacks' events left due
            self._rewind(trainer, pl_module, keep=self._redraw_controls(trainer, pl_module))
        self._restate(trainer)
        self._take_snapshot(trainer, pl_module)

    def _restate(self, trainer: Trainer) -> None:
        """At the start of the epoch after a rewind, restore the snapshot's optimizer and LR-scheduler states again.

        Between the rewind, at the event's epoch end, and this hook, whatever runs later may step them: the model's
        own ``on_train_epoch_end`` (manual optimization steps its schedulers there), callbacks listed after this
        one, Lightning's ``ReduceLROnPlateau`` step, and the epoch-start hooks of callbacks listed before this one.
        The snapshot was taken at this same hook of epoch ``k``, so the round starts as epoch ``k`` did. States
        that no longer fit the snapshot (a scheduler replaced, parameter groups added, by a callback listed
        before this one) are left as they are, with a warning.
        """
        epoch, self._restate_epoch = getattr(self, "_restate_epoch", None), None  # absent if pickled earlier
        if epoch != trainer.current_epoch or self._snapshot is None:
            return
        schedulers = self._schedulers(trainer)
        if self._snapshot.states_equal(trainer.optimizers, schedulers):
            return  # nothing stepped them since the rewind
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        monitors = [
            c
            for c in callbacks[: callbacks.index(self)]
            if isinstance(c, LearningRateMonitor) and c.logging_interval != "step"
        ]
        logged = _learning_rates(trainer) if monitors else None  # what they logged at this epoch's start
        try:
            self._snapshot.restore_states(trainer.optimizers, schedulers)
        except RuntimeError as err:
            rank_zero_warn(
                f"`rewind={self.rewind}`: the optimizers or LR schedulers were stepped after the rewind (by "
                f"ReduceLROnPlateau, the model's own `on_train_epoch_end` or a callback), and their states could not "
                f"be restored again at the start of epoch {epoch}: {str(err).removeprefix('Cannot rewind: ')}; a "
                f"callback listed before PruningCallback changed them in its `on_train_epoch_start`. This round "
                f"starts with those steps"
            )
            return
        for callback in _pruning_callbacks(trainer):
            if callback._inplace is not None:
                callback._inplace.reapply()  # the restored momentum at entries pruned since
        if monitors and _learning_rates(trainer) != logged:
            rank_zero_warn(
                f"`rewind={self.rewind}`: LearningRateMonitor is listed before PruningCallback, so at the start of "
                f"epoch {epoch} it logged the learning rates stepped after the rewind, which PruningCallback then "
                f"set back to the rewind epoch's, as training uses them; list LearningRateMonitor after "
                f"PruningCallback"
            )

    def _take_snapshot(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.rewind is not None and self._snapshot is None and trainer.current_epoch == self.rewind.epoch:
            lazy = [name for name, tensor in logical_tensors(pl_module).items() if is_lazy(tensor)]
            if lazy:
                raise ValueError(
                    f"`rewind={self.rewind}` snapshots every parameter and buffer at the start of epoch "
                    f"{self.rewind.epoch}, but {lazy} are not initialised yet (lazy modules, which the first forward "
                    f"pass initialises): run a batch through the model before `fit`, or rewind to an epoch >= 1"
                )
            self._snapshot = Snapshot.take(pl_module, trainer.optimizers, self._schedulers(trainer))
            self._snapshot_recheck = True

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._snapshot_recheck:
            self._retake_replaced(trainer)
        if self._inplace is not None:  # the reparametrization's forward masks whatever was copied into `weight_orig`
            self._inplace.zero_written()

    def _retake_replaced(self, trainer: Trainer) -> None:
        """At the rewind epoch's first step (or its end, without one), take anew the optimizers and LR schedulers
        that another callback's ``on_train_epoch_start`` replaced after the snapshot: StochasticWeightAveraging
        replaces the scheduler at its start, once. The rest stays as the epoch started, before the hooks that
        each round runs again."""
        self._snapshot_recheck = False
        if self._snapshot is not None:
            self._snapshot = self._snapshot.retake_replaced(trainer.optimizers, self._schedulers(trainer))

    @override
    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        # weights unfrozen and optimizers rebuilt since `on_train_start` (e.g. by BackboneFinetuning)
        # are taken in before backward, so whatever reads the gradients sees them masked; otherwise
        # this is a few identity and flag checks
        if self._inplace is not None:
            self._inplace.sync(trainer.optimizers)

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        # and whatever changed between backward and the step, a DDP communication hook registered since included
        if self._inplace is not None:
            self._inplace.sync(trainer.optimizers, per_step=_has_comm_hooks(trainer), backward=False)

    def _arm_refresh_check(self) -> None:
        """Note each target's masked weight as set now, for :meth:`_check_refreshed` at the next batch's end."""
        self._unrefreshed = {
            t.qualname: [
                (m, n, weakref.ref(m.__dict__[n])) for m, n in t.holders if isinstance(m.__dict__.get(n), Tensor)
            ]
            for t in self._targets
        }

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._unrefreshed:
            self._check_refreshed()

    def _check_refreshed(self) -> None:
        """Warn about reparametrized targets that no forward pre-hook recomputed during the training batch after a
        commit: read without calling their module (``F.linear(x, layer.weight)``), they would not train."""
        stale = [
            name
            for name, holders in self._unrefreshed.items()
            if holders and all(ref() is not None and m.__dict__.get(n) is ref() for m, n, ref in holders)
        ]
        self._unrefreshed = {}
        if stale:
            rank_zero_warn(
                f"The pruned targets {stale} were not recomputed during the training batch after their masks were "
                f"set: their modules were not called. A weight read without calling its module (as in "
                f"`F.linear(x, layer.weight)`) no longer trains once reparametrized (`weight_orig` gets no "
                f"gradient); use `masking='in_place'` for it. Ignore this for modules that this batch did not use."
            )

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.rewind is not None and self._fitting and not trainer.sanity_checking:
            self._metrics_before = dict(trainer.callback_metrics)

    @override
    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._inplace is not None and self._fitting:  # after other callbacks' `on_validation_start` too
            self._inplace.zero_written()

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._fitting and not trainer.sanity_checking:  # not `trainer.validate()`: no round ends there
            self._validated = (trainer.current_epoch, self._validation_metrics(trainer))

    def _validation_metrics(self, trainer: Trainer) -> dict[str, float]:
        """With a rewind, the ``val*`` metrics that the running validation logged. ``callback_metrics`` also
        keeps those an earlier one logged and this one did not (a metric measured every other epoch): an earlier
        round's. Lightning computes a new tensor for each metric logged."""
        if self.rewind is None:
            return {}
        before = getattr(self, "_metrics_before", {})
        fresh = ((k, v) for k, v in trainer.callback_metrics.items() if before.get(k) is not v)
        return {k: float(v) for k, v in fresh if k.startswith("val")}

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._snapshot_recheck:  # an epoch without a step
            self._retake_replaced(trainer)
        self._end_of_epoch(trainer, pl_module, trainer.current_epoch)
        self._rewind_all(trainer, pl_module, restate=True)

    def _rewind_all(self, trainer: Trainer, pl_module: LightningModule, *, restate: bool = False) -> None:
        """In the last pruning callback of the Trainer, run the rewinds that the events of all of them left due.

        Every callback's event ranks the weights the epoch trained (a rewind between two events would hand
        the second the rewound ones), and the model is rewound before anything after the pruning
        callbacks sees it (checkpoints among them). ``restate``: at an epoch's end, where hooks that run later
        may step the optimizers and schedulers before the next epoch starts (see :meth:`_restate`).
        """
        callbacks = _pruning_callbacks(trainer)
        if callbacks and callbacks[-1] is self:
            resampled = self._redraw_controls(trainer, pl_module)  # which every restore keeps
            for callback in callbacks:
                resampled += callback._rewind(trainer, pl_module, restate=restate, keep=resampled)

    @staticmethod
    def _redraw_controls(trainer: Trainer, pl_module: LightningModule) -> list[Tensor]:
        """Where a pruning callback is about to rewind the model, set the targets of every random-reinitialisation
        control that does not rewind now, but has re-sampled its targets before, back to its last draw (its
        equivalent of the weights a ticket rewinds to), and return them: the restores keep them."""
        callbacks = _pruning_callbacks(trainer)
        if not any(c._rewind_pending for c in callbacks):
            return []
        drawn: list[Tensor] = []
        for callback in callbacks:
            if (
                callback.rewind is not None
                and callback.rewind.reinit
                and callback._round
                and not callback._rewind_pending
            ):
                drawn += callback._draw(pl_module, keep=drawn)
        return drawn

    @torch.no_grad()
    def _draw(self, pl_module: LightningModule, keep: Sequence[Tensor]) -> list[Tensor]:
        """Re-sample every module under this control's seed for its round, the tensors in ``keep`` (another control
        drew them) left as they are; returns this callback's targets, now drawn."""
        assert self.seed is not None
        earlier = [(t, t.detach().clone()) for t in keep]  # the reset re-draws every module
        reinitialize(pl_module, reinit_seed(self.seed, self._round))
        for tensor, value in earlier:
            tensor.copy_(value)
        return [t.parameter for t in self._targets]

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fitting = False
        epoch, steps = trainer.current_epoch, trainer.max_steps
        # a fit resumed from a checkpoint of the step that reached `max_steps` trains nothing, and runs no end of
        # the epoch that step was in, where the fit that wrote the checkpoint ran that epoch's event
        cut = not self._trained and steps != -1 and trainer.global_step >= steps and _has_started(trainer, epoch)
        missed = [e for e in range(self._done_epoch + 1, epoch + cut) if self._target(e) is not None]
        if missed and not self._trained and cut:
            rank_zero_warn(
                f"The checkpoint resumed from was written at step {trainer.global_step} (`max_steps={steps}`) in "
                f"epoch {epoch}, before this callback's pruning event for epoch(s) {missed} ran (by a checkpoint saved "
                f"every n steps, or by a callback listed before PruningCallback saving in `on_train_epoch_end`), and "
                f"this fit had no step left to train, so the event(s) did not run, where the fit that wrote the "
                f"checkpoint ran them. `ModelCheckpoint`'s checkpoints at epoch ends are written after the events"
            )
        elif missed and not self._trained:
            rank_zero_warn(
                f"The checkpoint resumed from was written at the end of epoch {missed[-1]}, before this callback's "
                f"pruning event for epoch(s) {missed} ran (by a callback listed before PruningCallback, saving in "
                f"`on_train_epoch_end`), and this fit had no epoch left to train, so the event(s) did not run. "
                f"Resume with a larger `max_epochs` to run them, or list PruningCallback before that callback"
            )
        if self._inplace is not None:
            self._inplace.detach()  # before the move: re-hooking would zero optimizer state on another device
        # Lightning has moved the model and the optimizer state off the accelerator before this hook; what
        # this callback keeps between fits (rewind snapshot, masks) follows it, and the next fit moves it back.
        self._move_state(pl_module.device)
        if self._inplace is not None:
            # Another callback may have written the weights at the end of training (the averages of
            # StochasticWeightAveraging, which the reparametrization's forward would have masked).
            self._inplace.apply()
        if self.make_permanent:
            for callback in _pruning_callbacks(trainer):  # before any of them takes a tensor they share off the model
                if callback._pending_masks is None:
                    callback._keep_masks()
            core.make_permanent(self._targets)
        elif isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher):
            # ddp_spawn/ddp_fork hand rank 0's `state_dict()` to the main process, whose model is not
            # reparametrized and loads it with strict=False: `<name>_orig`/`_mask` would be dropped silently.
            # This process ends with the fit, so give that last state_dict plain, masked weights.
            pl_module._register_state_dict_hook(self._plain_state_dict_hook)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._evaluated = None  # an evaluated weights-only checkpoint has no state to load
        if stage == "fit":  # also a fit that the Tuner ended early, without `on_fit_end` or `on_exception`
            self._fitting = False

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # A failed fit skips `on_fit_end` and `teardown`; Lightning's strategies move the model to the CPU
        # right after this hook.
        self._fitting = False
        if self._inplace is not None:
            self._inplace.detach()
        self._move_state(torch.device("cpu"))

    def _move_state(self, device: torch.device) -> None:
        """Move what this callback keeps between fits (snapshot, held masks, in-place masks) to ``device``."""
        if self._snapshot is not None:
            self._snapshot = self._snapshot.to(device)
        if self._pending_masks is not None:
            self._pending_masks = {name: mask.to(device) for name, mask in self._pending_masks.items()}
        if self._inplace is not None:
            self._inplace.to(device)

    # ------------------------------------------------------------------ masks
    def _keep_masks(self) -> None:
        """Keep the masks the targets have now for the next fit (and for checkpoints until then)."""
        self._pending_masks, self._pending_targets = self._held_masks(), [t.qualname for t in self._targets]

    def _held_masks(self) -> dict[str, Tensor] | None:
        """Copies of the masks the targets have (none for a target never pruned)."""
        if self._inplace is not None:
            return {name: mask.clone() for name, mask in self._inplace.masks.items()} or None
        return {t.qualname: t.mask.clone() for t in self._targets if t.mask is not None} or None

    def _current_masks(self) -> list[Tensor]:
        """Each target's mask as the model holds it: the entries pruned by its reparametrization (another
        callback's, or ``torch.nn.utils.prune``'s) or by any pruning callback that masks in place count as pruned.
        A mask that another callback keeps in place is copied: this one's commit may store what it is given."""
        trainer = self._trainer() if self._trainer is not None else None
        callbacks = _pruning_callbacks(trainer) if trainer is not None else []
        others = [c._inplace for c in callbacks if c is not self and c._inplace is not None]
        if self._inplace is None and not others:
            return core.current_masks(self._targets)
        own = self._inplace.current(self._targets) if self._inplace is not None else [None] * len(self._targets)
        # by tensor: each callback names a tied tensor by the first of its own targets' names
        kept = [{id(other._params[name]): mask for name, mask in other.masks.items()} for other in others]
        held: list[Tensor | None] = []
        for t, mine in zip(self._targets, own):
            theirs = [m for m in (by_tensor.get(id(t.parameter)) for by_tensor in kept) if m is not None]
            found = [m for m in (t.mask, mine) if m is not None] + theirs
            if not found:
                held.append(None)
                continue
            combined = found[0]
            for mask in found[1:]:
                combined = combined & mask
            held.append(combined.clone() if len(found) == 1 and theirs else combined)
        return core.current_masks(self._targets, held)

    def _commit(
        self, masks: Sequence[Tensor], targets: Sequence[Target] | None = None, *, replace: bool = False
    ) -> None:
        """Commit ``masks`` to ``targets`` (default: this callback's)."""
        targets = self._targets if targets is None else targets
        # the masks are this callback's own (computed, or loaded) and kept by no one else: no copies
        if self._inplace is not None:
            self._inplace.commit(targets, masks, replace=replace, copy=False)
            self._mask_averages()
            # a target that another callback reparametrizes: its masked weight shows the zeros now
            _refresh_masked_weights(self._trainer() if self._trainer is not None else None, targets, self)
        else:
            core.commit_masks(targets, masks, replace=replace, copy=False)
            model = self._model() if self._model is not None else None
            if model is not None:
                reparam.hook_parents(model)  # attention reads `out_proj.weight` without calling `out_proj`
            self._arm_refresh_check()

    @torch.no_grad()
    def _mask_averages(self) -> None:
        """Zero the pruned entries in the averaged copies of the model that ``WeightAveraging`` callbacks keep
        (``EMAWeightAveraging``; validation and checkpoints use them). The weights stay zero there from now on,
        and so do their averages."""
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is None or self._inplace is None:
            return
        for callback in _averaging_callbacks(trainer):
            average = getattr(getattr(callback, "_average_model", None), "module", None)
            if not isinstance(average, torch.nn.Module):
                continue
            tensors = logical_tensors(average)  # `<name>_orig` where the copy was made of a reparametrized model
            for name, mask in self._inplace.masks.items():
                tensors[name].mul_(mask.to(tensors[name].device, tensors[name].dtype))

    # ------------------------------------------------------------------ events
    @staticmethod
    def _schedulers(trainer: Trainer) -> list[Any]:
        return [config.scheduler for config in trainer.lr_scheduler_configs]

    def _end_of_epoch(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        if epoch <= self._done_epoch or not self._fitting:
            return  # handled, or a loop run before `on_fit_start` (a tuner callback's), whose state is loaded back
        sparsity = self._target(epoch)
        if sparsity is not None:
            self._event(trainer, pl_module, epoch, sparsity)
        self._done_epoch = epoch

    def _generator(self, epoch: int) -> torch.Generator | None:
        if not self._method.random:
            return None
        assert self.seed is not None
        return torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)

    def _event(self, trainer: Trainer, pl_module: LightningModule, epoch: int, sparsity: float) -> None:
        current = self._current_masks()
        before = core.sparsity_stats(self._targets, self._method, current)
        masks = core.compute_masks(
            self._targets, self._method, sparsity, scope=self.scope, generator=self._generator(epoch), masks=current
        )
        del current
        after = core.sparsity_stats(self._targets, self._method, masks)
        self._check_ranks_agree(trainer, masks, epoch)
        changed = after.per_target != before.per_target
        if changed and self.rewind is not None and self._snapshot is None:
            raise RuntimeError(
                f"`rewind=Rewind(epoch={self.rewind.epoch})`: the event after epoch {epoch} has no snapshot to rewind "
                f"to, since epoch {self.rewind.epoch} did not start in this run and the checkpoint resumed from holds "
                f"none (was it written without this callback?); the model was left unchanged"
            )
        if changed and self.rewind is not None:
            self._check_snapshot(trainer, pl_module, f", event after epoch {epoch}: ", "; the model was left unchanged")
        if changed:
            self._commit(masks)
        del masks
        if changed and self.rewind is not None:
            # rewound once every pruning callback's event ran (`_rewind_all`): they all rank the trained weights
            self._round += 1
            self._rewind_pending = True
        self._report(trainer, before, after, epoch, sparsity)

    def _check_ranks_agree(self, trainer: Trainer, masks: Sequence[Tensor], epoch: int) -> None:
        if trainer.world_size <= 1:
            return
        checksum = mask_checksum(masks)
        gathered = trainer.strategy.all_gather(checksum)
        if not bool((gathered == gathered[0]).all()):
            differing = [
                t.qualname for i, t in enumerate(self._targets) if not bool((gathered[:, i] == gathered[0, i]).all())
            ]
            raise RuntimeError(
                f"Pruning masks differ between ranks after epoch {epoch} for {differing}; the model was left "
                f"unchanged. The ranks' weights have diverged (is the model wrapped by DDP?)"
            )

    def _rewind(
        self, trainer: Trainer, pl_module: LightningModule, *, restate: bool = False, keep: Sequence[Tensor] = ()
    ) -> list[Tensor]:
        """Run the rewind an event left pending, if any: restore the snapshot, re-apply the masks; with ``restate``,
        restore the optimizer and scheduler states again at the next epoch's start. The tensors in ``keep`` (another
        callback's control re-sampled them just before) keep their values. Returns the tensors this one re-sampled."""
        if not self._rewind_pending:
            return []
        assert self.rewind is not None
        if self._snapshot is None:
            raise RuntimeError(f"No snapshot to rewind to: epoch {self.rewind.epoch} has not started yet")
        optimizers, schedulers = trainer.optimizers, self._schedulers(trainer)
        resampled: list[Tensor] = []
        if self.rewind.reinit:  # the targets re-sampled, every other tensor rewound
            self._snapshot.check(pl_module, optimizers, schedulers)
            resampled = self._draw(pl_module, keep)
        self._snapshot.restore(pl_module, optimizers, schedulers, keep=[*keep, *resampled])
        self._rewind_pending = False
        if restate:
            self._restate_epoch = trainer.current_epoch + 1
        self._commit(self._current_masks())
        # the rewind wrote every weight and the optimizers' state, the targets another callback masks too
        # (reparametrized ones keep their masks, which the snapshot leaves out: their masked weights show the
        # rewound values now, not at the next forward)
        others = [other for other in _pruning_callbacks(trainer) if other is not self]
        for other in others:
            if other._inplace is not None:
                other._inplace.reapply()
        _refresh_masked_weights(trainer, [t for o in others if o._inplace is None for t in o._targets], self)
        return resampled

    def _report(
        self, trainer: Trainer, before: core.SparsityStats, after: core.SparsityStats, epoch: int, target: float
    ) -> None:
        if not trainer.is_global_zero:
            return
        namespace = self._namespace(trainer)
        metrics = reporting.scalars(after, per_layer=self.log_per_layer, namespace=namespace)
        if self.rewind is not None:
            metrics[reporting.tag("lottery", namespace, "round")] = float(self._round)
            validated, values = getattr(self, "_validated", (-1, {}))
            if validated == epoch:  # else the values are an earlier round's
                metrics.update({reporting.tag("lottery", namespace, f"round_end/{k}"): v for k, v in values.items()})
        reporting.log_event(trainer.loggers, metrics, after, self._surviving, trainer.global_step, namespace)
        shapes = {t.qualname: tuple(t.parameter.shape) for t in self._targets}
        if log.isEnabledFor(logging.INFO):  # the table costs statistics no one reads otherwise
            log.info(reporting.table(before, after, shapes, epoch=epoch, target=target))

    def _namespace(self, trainer: Trainer) -> str:
        """Where this callback's tags go when the Trainer has several: its method's name, numbered
        from 1 in the order of the Trainer's callbacks if another one prunes by the same method;
        ``""`` (the plain tags) when it is the only one."""
        callbacks = _pruning_callbacks(trainer)
        if len(callbacks) < 2:
            return ""
        same = [c for c in callbacks if c.method_name == self.method_name]
        if len(same) < 2:
            return self.method_name
        return f"{self.method_name}_{next(i for i, c in enumerate(same, 1) if c is self)}"

    def _surviving(self) -> Iterator[tuple[str, Tensor]]:
        for t, mask in zip(self._targets, self._current_masks()):
            yield t.qualname, t.parameter.detach()[mask]

    # ------------------------------------------------------------------ checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        # after a fit that made the pruning permanent, the masks are the ones kept for the next fit
        # kept for the next fit (after one, or loaded): what it restores; during a fit, what the targets hold
        masks: dict[str, Any] | None = None  # in a fit, before `on_fit_start` resolved the targets: nothing known
        if self._pending_masks is not None or self._targets or self._trainer is None:
            held = self._pending_masks if self._pending_masks is not None else (self._held_masks() or {})
            masks = {name: {"shape": tuple(mask.shape), "bits": pack_mask(mask)} for name, mask in held.items()}
        return {
            "version": 1,
            "done_epoch": self._done_epoch,
            "round": self._round,
            "rewind_pending": self._rewind_pending,
            "restate_epoch": self._restate_epoch,
            "rewind": self._rewind_state(),
            "seed": self.seed,
            "masks": masks,
            "targets": self._pending_targets
            if self._pending_masks is not None
            else [t.qualname for t in self._targets],
            "snapshot": None if self._snapshot is None else self._snapshot.state_dict(),
            "validated": dict(zip(("epoch", "metrics"), self._validated_now())),
        }

    def _validated_now(self) -> tuple[int, dict[str, float]]:
        """The last validation's epoch and metrics; the running one's if a checkpoint is saved at its end before
        this callback's ``on_validation_end`` (by a callback listed before it)."""
        trainer = None if self._trainer is None else self._trainer()
        if trainer is not None and getattr(self, "_fitting", False):
            if trainer.validating and not trainer.sanity_checking:
                return trainer.current_epoch, self._validation_metrics(trainer)
        return getattr(self, "_validated", (-1, {}))

    def _rewind_state(self) -> dict[str, Any] | None:
        if self.rewind is None:
            return None
        state: dict[str, Any] = {"epoch": self.rewind.epoch, "reinit": self.rewind.reinit}
        if self.rewind.reinit:
            state["resampled"] = "targets"  # earlier versions re-sampled every tensor of the model
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        evaluated, self._evaluated = self._evaluated, None
        if evaluated == "another model":
            return  # evaluated with a checkpoint of its own: the fitted model's state stays as it is
        self._check_saved_rewind(state_dict)
        self._done_epoch = state_dict.get("done_epoch", -1)
        self._round = state_dict.get("round", 0)
        self._rewind_pending = bool(state_dict.get("rewind_pending", False))
        self._restate_epoch = state_dict.get("restate_epoch") if self.rewind is not None else None
        if self._rewind_pending and self.rewind is None:
            self._rewind_pending = False
            rank_zero_warn(
                "The checkpoint was written after a pruning event whose rewind had not run yet, and this callback "
                "has no `rewind`: training resumes from the weights as trained, not rewound"
            )
        saved_seed = state_dict.get("seed")  # `None` from a callback that never fit (a `ddp_spawn` main process)
        if saved_seed is not None:
            self.seed = int(saved_seed)
        masks = state_dict.get("masks", {})
        # an empty dict is restored too: the checkpoint predates the first event; `None`: saved in a fit before
        # this callback looked at the model (a tuner in `on_fit_start`), which keeps the masks it has; and
        # the masks of a checkpoint evaluated now are on the model already (see `_set_checkpoint_masks`)
        if masks is not None and evaluated != "masks set":
            self._pending_masks = {name: unpack_mask(m["bits"], m["shape"]) for name, m in masks.items()}
            self._pending_targets = state_dict.get("targets")  # absent from checkpoints of earlier versions
        snapshot = state_dict.get("snapshot")
        self._snapshot = None if snapshot is None else Snapshot.from_state_dict(snapshot)
        validated = state_dict.get("validated", {})  # a checkpoint saved at validation end, before the event
        self._validated = (validated.get("epoch", -1), dict(validated.get("metrics", {})))
        if getattr(self, "_fitting", False) and self._targets:
            # restored within a running fit (the learning-rate and batch-size finders save the state and
            # load it back): `on_fit_start` has passed, so set the saved masks now (`_commit` moves them)
            if self._snapshot is not None:
                self._snapshot = self._snapshot.to(self._targets[0].parameter.device)
            self._restore_pending()

    def _check_saved_rewind(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("rewind")  # absent from checkpoints of earlier versions
        current = self._rewind_state()
        if saved is None or current is None:
            return
        if (saved["epoch"], saved["reinit"]) != (current["epoch"], current["reinit"]):
            raise ValueError(
                f"The checkpoint's pruning rounds rewound with Rewind(epoch={saved['epoch']}, "
                f"reinit={saved['reinit']}), but this callback has `rewind={self.rewind}`: the rounds would mix "
                f"two experiments. Resume with the checkpoint's `rewind`, or start the fit anew"
            )
        if current.get("resampled") != saved.get("resampled") and state_dict.get("round", 0) > 0:
            raise ValueError(
                "The checkpoint's control rounds (`Rewind(reinit=True)`) re-sampled every tensor of the model, as "
                "earlier versions of this package did; this one re-samples the targets only and rewinds the rest: "
                "the rounds would mix two experiments. Start the fit anew"
            )

    def _evaluation_targets(self, pl_module: LightningModule) -> list[Target]:
        """The targets in ``pl_module`` whose masks an evaluated checkpoint sets: with the default masking,
        those this package's hook reparametrizes; with ``in_place``, the fit's, if ``pl_module`` holds them."""
        try:
            targets = resolve_targets(pl_module, self.target_patterns, self.exclude)
        except ValueError:
            return []  # not this callback's model
        if self._inplace is None:
            return [t for t in targets if all(reparam.is_reparametrized(m, n) for m, n in t.holders)]
        fitted = self._targets
        same = len(fitted) == len(targets) and all(a.parameter is b.parameter for a, b in zip(fitted, targets))
        return fitted if same and self._inplace.masks else []

    def _loaded_targets(
        self, pl_module: LightningModule, targets: list[Target], weights: dict[str, Any]
    ) -> list[Target]:
        """The ``targets`` whose weight ``weights`` (a checkpoint's ``state_dict``) holds, plain or reparametrized."""
        keys = _keys_by_target(pl_module, targets)
        return [t for t, ks in zip(targets, keys) if any(k in weights or k + "_orig" in weights for k in ks)]

    def _set_checkpoint_masks(
        self, pl_module: LightningModule, targets: list[Target], checkpoint: dict[str, Any]
    ) -> None:
        """Set the masks saved in ``checkpoint``'s state of this callback on ``targets``; a target whose mask
        ``checkpoint``'s weights hold keeps the mask loaded from there.

        A state saved before the first event (no masks) sets all-``True`` ones. Where the checkpoint
        holds no state (a weights-only checkpoint), the zeros of the loaded plain weight count as
        pruned; in the last fit's model, those that the fit's mask pruned: every entry pruned when the
        checkpoint was written, if the fit wrote it. The model computes the checkpoint's weights
        exactly either way, and what this callback saves next and restores in the next fit are the
        masks the model holds now. A plain model's (``make_permanent=True``) masks kept for the next
        fit follow its new weights the same way.
        """
        state = self._saved_state(checkpoint)
        saved = None if state is None else state.get("masks")  # `{}`: saved before the first event
        weights = checkpoint.get("state_dict", {})
        last = self._model() if self._model is not None else None
        fitted = self._fitted_masks if self._fitted_masks is not None and pl_module is last else {}

        def from_zeros(t: Target) -> Tensor:  # what the zeros of a plain checkpoint say (see above)
            return fitted[t.qualname] | (t.parameter != 0) if t.qualname in fitted else t.parameter != 0

        owner = last is None or pl_module is last  # not another model than the one this callback fitted
        if not owner:
            self._evaluated = "another model"
        if not targets:  # a plain model: the masks kept for the next fit follow its new weights
            if saved is None and self._pending_masks is not None and owner and last is not None:
                loaded = self._loaded_targets(pl_module, self._targets, weights)
                self._pending_masks.update((t.qualname, from_zeros(t)) for t in loaded)
            return
        keys = _keys_by_target(pl_module, targets)
        unloaded = [t for t, ks in zip(targets, keys) if not any(k + "_mask" in weights for k in ks)]
        if saved is None:
            new = [from_zeros(t) for t in unloaded]
        else:  # all True where the state has none
            packed = [saved.get(t.qualname) for t in unloaded]
            new = core.current_masks(
                unloaded, [None if m is None else unpack_mask(m["bits"], m["shape"]) for m in packed]
            )
        if self._inplace is not None:
            self._inplace.commit(unloaded, new, replace=True)
        else:
            core.commit_masks(unloaded, new, replace=True)
            reparam.hook_parents(pl_module)
        if owner:
            # the model holds the masks now, which a checkpoint saved next and the next fit take from it; Lightning
            # loads the checkpoint's state of this callback after this, and its masks are set already
            self._pending_masks, self._evaluated = None, "masks set"

    def _plain_keys(self, pl_module: LightningModule, targets: Sequence[Target] | None = None) -> list[str]:
        """The state-dict keys of ``targets`` (default: this callback's) in ``pl_module``, under every prefix."""
        return [
            key for keys in _keys_by_target(pl_module, self._targets if targets is None else targets) for key in keys
        ]

    def _plain_state_dict_hook(self, module: LightningModule, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        plain_state_dict(state_dict, [prefix + key for key in self._plain_keys(module)])

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("callbacks", {})
        legacy = self._key(exclude=[])  # written before `exclude` was part of the key
        if self.exclude and self.state_key not in saved and legacy in saved:
            saved[self.state_key] = saved.pop(legacy)
        others = [key for key in saved if key.startswith(type(self).__name__) and key != self.state_key]
        if self.state_key not in saved and others:
            rank_zero_warn(
                f"The checkpoint holds pruning state for {others}, not for this callback ({self.state_key!r}): "
                f"`method`, `scope`, `targets` and `exclude` must match the run that wrote it, or the masks and "
                f"schedule position are not restored"
            )
        self._stateless_resume = self.state_key not in saved and not others
        # before every callback's `load_state_dict`: a `BaseFinetuning` listed before this callback looks its
        # parameters up in its `on_fit_start`, before this one's sets the masks, under the names the model has now
        self._rename_finetuning_states(trainer, pl_module, checkpoint, plain=False)
