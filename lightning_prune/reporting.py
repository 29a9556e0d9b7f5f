"""What a pruning event shows: logger scalars, TensorBoard histograms and bar chart, the console table.

Example:
    >>> from lightning_prune.core import Counts, SparsityStats
    >>> before = SparsityStats({"fc1.weight": Counts(0, 8), "fc2.weight": Counts(0, 4)})
    >>> after = SparsityStats({"fc1.weight": Counts(6, 8), "fc2.weight": Counts(0, 4)})
    >>> scalars(after, per_layer=True)
    {'sparsity/global': 0.5, 'sparsity/fc1.weight': 0.75, 'sparsity/fc2.weight': 0.0}
    >>> print(table(before, after, {"fc1.weight": (2, 4), "fc2.weight": (4,)}, epoch=0, target=0.5))
    pruning event after epoch 0: target 50.00%, reached 50.00%
    layer       shape   sparsity         kept/total
    fc1.weight  (2, 4)  0.00% -> 75.00%  2/8
    fc2.weight  (4,)    0.00% -> 0.00%   4/4
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_prune.core import SparsityStats

__all__ = ["log_event", "scalars", "table", "tag"]


def tag(group: str, namespace: str, name: str) -> str:
    """``<group>/<name>``, or ``<group>/<namespace>/<name>`` with a namespace (one callback's among several).

    Example:
        >>> tag("sparsity", "", "global"), tag("sparsity", "l1_unstructured_2", "global")
        ('sparsity/global', 'sparsity/l1_unstructured_2/global')
    """
    return f"{group}/{namespace}/{name}" if namespace else f"{group}/{name}"


def scalars(stats: SparsityStats, *, per_layer: bool, namespace: str = "") -> dict[str, float]:
    """``sparsity/global`` and, with ``per_layer``, ``sparsity/<qualified name>`` (see :func:`tag`)."""
    out = {tag("sparsity", namespace, "global"): stats.overall}
    if per_layer:
        out.update({tag("sparsity", namespace, name): c.sparsity for name, c in stats.per_target.items()})
    return out


def table(
    before: SparsityStats,
    after: SparsityStats,
    shapes: Mapping[str, Sequence[int]],
    *,
    epoch: int,
    target: float,
) -> str:
    """A plain-text per-layer table of one event."""
    rows = [("layer", "shape", "sparsity", "kept/total")]
    for name, c in after.per_target.items():
        b = before.per_target[name]
        rows.append(
            (
                name,
                str(tuple(shapes[name])),
                f"{b.sparsity:.2%} -> {c.sparsity:.2%}",
                f"{c.total - c.pruned}/{c.total}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    head = f"pruning event after epoch {epoch}: target {target:.2%}, reached {after.overall:.2%}"
    return "\n".join([head, *lines])


#: Above this many targets the bar chart names none of them (the per-target scalars do) and stops widening.
_NAMED_BARS = 40


def _bar_chart(stats: SparsityStats) -> Any:
    from matplotlib.figure import Figure  # no pyplot: the user's backend is left alone

    names = list(stats.per_target)
    fig = Figure(figsize=(max(4.0, 0.6 * min(len(names), _NAMED_BARS) + 2), 3.2))
    ax = fig.add_subplot()
    values = [stats.per_target[n].sparsity for n in names]
    if len(names) <= _NAMED_BARS:
        ax.bar(range(len(names)), values, color="#4c72b0")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    else:  # one artist for all bars: a thousand `bar` rectangles take seconds to draw
        ax.stairs(values, [i - 0.5 for i in range(len(names) + 1)], fill=True, color="#4c72b0")
        ax.set_xlabel(f"{len(names)} targets, in the order of their sparsity/<name> scalars", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity")
    ax.axhline(stats.overall, color="#c44e52", linestyle="--", linewidth=1, label=f"global {stats.overall:.1%}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def log_event(
    loggers: Sequence[Any],
    metrics: Mapping[str, float],
    stats: SparsityStats,
    surviving: Callable[[], Iterator[tuple[str, Tensor]]],
    step: int,
    namespace: str = "",
) -> None:
    """Send ``metrics`` to every logger at ``step``; histograms and a bar chart to those that take them.

    ``surviving()`` yields each target's surviving weights, one at a time; a logger whose ``experiment`` has
    ``add_histogram``/``add_figure`` (TensorBoard) gets ``weights/<name>`` histograms of their
    magnitudes (the finite ones) and a ``sparsity/per_layer`` bar chart (with a ``namespace`` as
    :func:`tag` puts it; its bars are named up to 40 targets), behind the logger's ``prefix`` as its
    scalars are.
    """
    for logger in loggers:
        logger.log_metrics(dict(metrics), step=step)
        experiment: Any = getattr(logger, "experiment", None)
        prefix = getattr(logger, "_prefix", "")  # what `log_metrics` puts before each key, joined by "-"
        head = f"{prefix}{getattr(logger, 'LOGGER_JOIN_CHAR', '-')}" if prefix else ""
        if hasattr(experiment, "add_histogram"):
            for name, values in surviving():
                magnitudes = values.abs().to(torch.float32).cpu()
                magnitudes = magnitudes[magnitudes.isfinite()]  # a diverged run's NaN and inf have no bin
                if magnitudes.numel():
                    experiment.add_histogram(head + tag("weights", namespace, name), magnitudes, step)
        if hasattr(experiment, "add_figure"):
            try:
                figure = _bar_chart(stats)
            except ImportError:
                continue
            experiment.add_figure(head + tag("sparsity", namespace, "per_layer"), figure, step, close=True)
