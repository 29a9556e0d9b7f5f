"""Iterative pruning for PyTorch Lightning.

Add :class:`PruningCallback` to a ``Trainer``: it prunes at epoch ends on a schedule, with exact
cumulative sparsity, checkpoints that resume, identical masks on every DDP rank, sparsity logged to
every logger, lottery-ticket rewinding, and plain weights at the end of ``fit``.

Example:
    >>> from lightning_prune import PruningCallback, Rewind
    >>> from lightning_prune.schedules import Geometric
    >>> callback = PruningCallback(scope="global", schedule=Geometric(rate=0.2), rewind=Rewind(epoch=0))
"""

from lightning_prune import schedules
from lightning_prune.callback import PruningCallback
from lightning_prune.lottery import Rewind

__all__ = ["PruningCallback", "Rewind", "schedules"]
__version__ = "0.1.0"
