"""The ``lightning-prune`` console script: Lightning's ``LightningCLI`` with built-in defaults.

Any importable ``LightningModule`` and ``LightningDataModule`` can be given by ``class_path``;
without one, the model is :class:`~lightning_prune.demo.module.ImageClassifier` (LeNet) and the
data :class:`~lightning_prune.demo.data.DigitsDataModule` (scikit-learn's bundled digits, so
nothing is downloaded). The pruning itself is a callback in the YAML::

    trainer:
      callbacks:
        - class_path: lightning_prune.PruningCallback
          init_args:
            method: l1_unstructured
            scope: global
            schedule:
              class_path: lightning_prune.schedules.Polynomial
              init_args: {final_sparsity: 0.9, start_epoch: 0, end_epoch: 7}
            rewind: {epoch: 0}

A custom ``BasePruningMethod`` subclass is given as ``method: my_package.MyPruningMethod``.
Import paths are looked up in the current directory too (after the installed packages), so a
``my_methods.py`` in the directory the command runs from is found (not one beside a YAML
elsewhere: run from there, or put its folder on ``PYTHONPATH``).

Usage::

    lightning-prune fit --config configs/lenet_digits.yaml
    python -m lightning_prune.cli fit --config configs/lenet_digits.yaml --trainer.max_epochs=30
    lightning-prune fit --print_config                # the full configuration, defaults included
"""

from __future__ import annotations

import os
import sys
import traceback

import jsonargparse
import lightning
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

__all__ = ["DEFAULT_DATA", "DEFAULT_MODEL", "PruneCLI", "main"]

DEFAULT_MODEL = "lightning_prune.demo.module.ImageClassifier"
DEFAULT_DATA = "lightning_prune.demo.data.DigitsDataModule"


class PruneCLI(LightningCLI):
    """``LightningCLI`` whose model and data default to the built-in LeNet on digits.

    A value this package's classes refuse is reported as a parser error with their message (the
    argument, the value, what is allowed), not as the tracebacks of every type it was tried as.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            own = _raised_here(err)
            if own is None:
                raise
            self.parser.error(str(own))


def _raised_here(err: BaseException) -> BaseException | None:
    """The exception in ``err``'s chain that this package's code raised, if the parser (jsonargparse, Lightning)
    raised the others; ``None`` where other code, a user's class, raised one first: its message is the one."""
    package = os.path.dirname(os.path.abspath(__file__))
    parsers = tuple(os.path.dirname(os.path.abspath(m.__file__ or "")) + os.sep for m in (jsonargparse, lightning))
    seen: BaseException | None = err
    while seen is not None:
        # generated code (a dataclass's `__init__`, "<string>") belongs to whoever defined it
        where = [os.path.abspath(f.filename) for f in traceback.extract_tb(seen.__traceback__) if f.filename[:1] != "<"]
        ours = [i for i, w in enumerate(where) if w.startswith(package + os.sep)]
        if ours and ours[-1] == len(where) - 1:
            # raised here, and called by the parser itself: not from within a user's class
            return seen if all(w.startswith(parsers) for w in where[: ours[0]]) else None
        if where and not where[-1].startswith(parsers):
            return None
        seen = seen.__cause__ or seen.__context__
    return None


def build_cli(args: ArgsType = None, run: bool = True) -> PruneCLI:
    """Parse ``args`` (default: ``sys.argv[1:]``) and run the subcommand.

    Args:
        args: command-line arguments, e.g. ``["fit", "--config", "configs/lenet_digits.yaml"]``.
        run: run the subcommand; with ``False`` there is no subcommand, the objects are only built.

    Returns:
        The ``LightningCLI``, with its ``model``, ``datamodule`` and ``trainer``.

    Example:
        >>> cli = build_cli(["--trainer.logger=false", "--model.lr=0.1"], run=False)
        >>> type(cli.model).__name__, type(cli.datamodule).__name__, cli.model.hparams.lr
        ('ImageClassifier', 'DigitsDataModule', 0.1)
    """
    return PruneCLI(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> None:
    """The ``lightning-prune`` console script: run the subcommand in ``args`` (default: ``sys.argv[1:]``).

    The current directory goes on ``sys.path`` (``python -m lightning_prune.cli`` puts it there
    too), last: the YAML's import paths find the user's own modules there, and installed packages
    still come first.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    build_cli(args)


if __name__ == "__main__":
    main()
