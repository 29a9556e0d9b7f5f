"""Sparsity schedules: closed-form ``sparsity_at(epoch)``.

``sparsity_at(e)`` is the cumulative fraction of the targeted entries (or slices) that are zero
after the pruning event at the end of training epoch ``e`` (0-based), or ``None`` when there is
no event that epoch. Values depend on the epoch alone, so resuming needs only the epoch back.

Example:
    >>> schedule = Polynomial(final_sparsity=0.9, start_epoch=0, end_epoch=3)
    >>> [round(schedule.sparsity_at(e), 4) for e in range(4)]
    [0.0, 0.6333, 0.8667, 0.9]
    >>> schedule.sparsity_at(4) is None
    True
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from fractions import Fraction

__all__ = ["Constant", "Explicit", "Geometric", "Linear", "Polynomial", "Schedule"]


def _check_fraction(name: str, value: object, *, open_low: bool = False, open_high: bool = False) -> float:
    low, high = "(" if open_low else "[", ")" if open_high else "]"
    # any real number, NumPy's scalars too; anything else reads as NaN, which fails the range
    number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    if not 0 <= number <= 1 or (open_low and number == 0) or (open_high and number == 1):
        raise ValueError(f"Expected `{name}` in {low}0, 1{high}, got {value!r}")
    return number


def _check_epoch(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"Expected `{name}` to be an int >= {minimum}, got {value!r}")
    return int(value)


class Schedule(ABC):
    """Base class: a subclass implements :meth:`sparsity_at`."""

    @abstractmethod
    def sparsity_at(self, epoch: int) -> float | None:
        """Target sparsity after the event at the end of ``epoch``, or ``None`` for no event."""

    def last_epoch(self) -> int | None:
        """The epoch of the last event, or ``None`` where there is no last one (or it is not known)."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """One event, at the end of ``start_epoch``, to ``sparsity``.

    Args:
        sparsity: the fraction of the targeted entries (or slices) pruned, in [0, 1].
        start_epoch: the epoch at whose end the event runs.

    Example:
        >>> [Constant(0.5, start_epoch=1).sparsity_at(e) for e in range(3)]
        [None, 0.5, None]
    """

    def __init__(self, sparsity: float, start_epoch: int = 0) -> None:
        self.sparsity = _check_fraction("sparsity", sparsity)
        self.start_epoch = _check_epoch("start_epoch", start_epoch)

    def sparsity_at(self, epoch: int) -> float | None:
        return self.sparsity if epoch == self.start_epoch else None

    def last_epoch(self) -> int:
        return self.start_epoch


#: Integer powers up to this one are taken in exact arithmetic (the numbers grow with the power).
_EXACT_POWERS = 64


def _as_written(value: float) -> Fraction:
    """``value`` as its shortest decimal form reads: ``0.1`` is 1/10, not the binary float nearest to it."""
    return Fraction(repr(float(value)))


class _Ramp(Schedule):
    """Events every ``every_n_epochs`` from ``start_epoch``, and at ``end_epoch``."""

    def __init__(
        self,
        final_sparsity: float,
        start_epoch: int,
        end_epoch: int,
        initial_sparsity: float = 0.0,
        every_n_epochs: int = 1,
    ) -> None:
        self.final_sparsity = _check_fraction("final_sparsity", final_sparsity)
        self.initial_sparsity = _check_fraction("initial_sparsity", initial_sparsity)
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                f"Expected `initial_sparsity` <= `final_sparsity` (masks never regrow), "
                f"got {initial_sparsity} > {final_sparsity}"
            )
        self.start_epoch = _check_epoch("start_epoch", start_epoch)
        self.end_epoch = _check_epoch("end_epoch", end_epoch, minimum=self.start_epoch)
        self.every_n_epochs = _check_epoch("every_n_epochs", every_n_epochs, minimum=1)

    def _progress(self, fraction: Fraction) -> Fraction:
        raise NotImplementedError

    def sparsity_at(self, epoch: int) -> float | None:
        if epoch < self.start_epoch or epoch > self.end_epoch:
            return None
        if epoch != self.end_epoch and (epoch - self.start_epoch) % self.every_n_epochs:
            return None
        if epoch == self.start_epoch == self.end_epoch:
            return self.final_sparsity
        # In exact arithmetic, on the arguments as written, and rounded once: the float formula misses
        # by an ulp now and then (`Linear(0.1, 0, 7)` after epoch 5: 1/14 plus 2 ulps), enough to move
        # `round(s * n)` off a tie.
        initial, final = _as_written(self.initial_sparsity), _as_written(self.final_sparsity)
        progress = self._progress(Fraction(epoch - self.start_epoch, self.end_epoch - self.start_epoch))
        return float(initial + (final - initial) * progress)

    def last_epoch(self) -> int:
        return self.end_epoch


class Linear(_Ramp):
    """Sparsity rising linearly from ``initial_sparsity`` at ``start_epoch`` to ``final_sparsity`` at ``end_epoch``.

    Args:
        final_sparsity: the sparsity after the event at ``end_epoch``, in [0, 1].
        start_epoch: the first event's epoch, where the ramp is at ``initial_sparsity``.
        end_epoch: the last event's epoch (``>= start_epoch``).
        initial_sparsity: the sparsity at ``start_epoch`` (``<= final_sparsity``).
        every_n_epochs: an event every that many epochs from ``start_epoch`` (and one at ``end_epoch``).

    Example:
        >>> [Linear(0.6, start_epoch=1, end_epoch=3).sparsity_at(e) for e in range(5)]
        [None, 0.0, 0.3, 0.6, None]
    """

    def _progress(self, fraction: Fraction) -> Fraction:
        return fraction


class Polynomial(_Ramp):
    """Zhu & Gupta (2017), "To prune or not to prune": ``s_f + (s_i - s_f) * (1 - progress) ** power``.

    Most of the pruning happens early, while the network can still recover; the last events
    remove little.

    Args:
        final_sparsity: the sparsity after the event at ``end_epoch``, in [0, 1].
        start_epoch: the first event's epoch, where the ramp is at ``initial_sparsity``.
        end_epoch: the last event's epoch (``>= start_epoch``).
        initial_sparsity: the sparsity at ``start_epoch`` (``<= final_sparsity``).
        power: the exponent (``> 0``); 3 in the paper.
        every_n_epochs: an event every that many epochs from ``start_epoch`` (and one at ``end_epoch``).

    Example:
        >>> [round(Polynomial(0.8, 0, 2, power=2).sparsity_at(e), 2) for e in range(3)]
        [0.0, 0.6, 0.8]
    """

    def __init__(
        self,
        final_sparsity: float,
        start_epoch: int,
        end_epoch: int,
        initial_sparsity: float = 0.0,
        power: float = 3,
        every_n_epochs: int = 1,
    ) -> None:
        super().__init__(final_sparsity, start_epoch, end_epoch, initial_sparsity, every_n_epochs)
        if isinstance(power, bool) or not isinstance(power, numbers.Real) or not power > 0:
            raise ValueError(f"Expected `power` > 0, got {power!r}")
        # a whole number as an int (YAML's `3.0` too): its ramp is then computed exactly
        self.power: float = int(power) if float(power).is_integer() else float(power)

    def _progress(self, fraction: Fraction) -> Fraction:
        if isinstance(self.power, int) and self.power <= _EXACT_POWERS:
            return 1 - (1 - fraction) ** self.power
        return 1 - Fraction((1.0 - float(fraction)) ** self.power)


class Geometric(Schedule):
    """Each event prunes ``rate`` of what remains, as in lottery-ticket IMP: ``1 - (1 - rate) ** j``.

    Events at ``start_epoch``, ``start_epoch + every_n_epochs``, ...; the ``j``-th event
    (1-based) reaches ``1 - (1 - rate) ** j``, capped at ``final_sparsity`` (after which
    there are no more events).

    Args:
        rate: the fraction of the remaining entries each event prunes, in (0, 1].
        start_epoch: the first event's epoch.
        every_n_epochs: epochs from one event to the next.
        final_sparsity: the cap, reached by the last event; ``None``: events until training ends.

    Example:
        >>> s = Geometric(rate=0.2, every_n_epochs=2, start_epoch=1)
        >>> [s.sparsity_at(e) for e in range(6)]
        [None, 0.2, None, 0.36, None, 0.488]
    """

    def __init__(
        self,
        rate: float,
        start_epoch: int = 0,
        every_n_epochs: int = 1,
        final_sparsity: float | None = None,
    ) -> None:
        self.rate = _check_fraction("rate", rate, open_low=True)
        if self._reached(1) == 0:  # read to 12 decimals, as the schedule reports its targets
            raise ValueError(
                f"Expected `rate` to be 1e-12 or more once rounded to 12 decimals, as the sparsities are, got {rate!r}"
            )
        self.start_epoch = _check_epoch("start_epoch", start_epoch)
        self.every_n_epochs = _check_epoch("every_n_epochs", every_n_epochs, minimum=1)
        self.final_sparsity = None if final_sparsity is None else _check_fraction("final_sparsity", final_sparsity)

    def sparsity_at(self, epoch: int) -> float | None:
        if epoch < self.start_epoch or (epoch - self.start_epoch) % self.every_n_epochs:
            return None
        j = (epoch - self.start_epoch) // self.every_n_epochs + 1
        previous, sparsity = self._reached(j - 1), self._reached(j)
        if self.final_sparsity is not None:
            if previous >= self.final_sparsity and j > 1:
                return None
            sparsity = min(sparsity, self.final_sparsity)
        return sparsity

    def last_epoch(self) -> int | None:
        if self.final_sparsity is None:
            return None
        # the first event that reaches the cap
        low, high = 1, 1
        while self._reached(high) < self.final_sparsity:
            low, high = high + 1, high * 2
        while low < high:
            mid = (low + high) // 2
            low, high = (mid + 1, high) if self._reached(mid) < self.final_sparsity else (low, mid)
        return self.start_epoch + (low - 1) * self.every_n_epochs

    def _reached(self, j: int) -> float:
        """``1 - (1 - rate) ** j``, rounded to 12 decimals (so that 0.2 and 0.36 read as written)."""
        return round(1.0 - (1.0 - self.rate) ** j, 12)


class Explicit(Schedule):
    """Events exactly at the given epochs: ``{epoch: sparsity}``, non-decreasing in epoch.

    Args:
        sparsities: the sparsity after each event, by the epoch at whose end it runs (YAML's string
            keys are read as epochs).

    Example:
        >>> s = Explicit({0: 0.5, 2: 0.75})
        >>> [s.sparsity_at(e) for e in range(3)]
        [0.5, None, 0.75]
    """

    def __init__(self, sparsities: dict[int | str, float]) -> None:
        if not isinstance(sparsities, dict) or not sparsities:
            raise ValueError(f"Expected `sparsities` to be a non-empty {{epoch: sparsity}} mapping, got {sparsities!r}")
        checked: dict[int, float] = {}
        for epoch, value in sparsities.items():
            digits = isinstance(epoch, str) and epoch.isascii() and epoch.isdigit()  # not '²', which int() refuses
            key = _check_epoch("sparsities epoch", int(epoch) if digits else epoch)
            if key in checked:
                raise ValueError(
                    f"Expected `sparsities` to name each epoch once, got epoch {key} twice: {sparsities!r}"
                )
            checked[key] = _check_fraction(f"sparsities[{epoch}]", value)
        ordered = sorted(checked.items())
        for (e0, s0), (e1, s1) in zip(ordered, ordered[1:]):
            if s1 < s0:
                raise ValueError(
                    f"Expected `sparsities` to be non-decreasing in epoch (masks never regrow), "
                    f"got {s0} at epoch {e0} and {s1} at epoch {e1}"
                )
        self.sparsities = dict(ordered)

    def sparsity_at(self, epoch: int) -> float | None:
        return self.sparsities.get(epoch)

    def last_epoch(self) -> int:
        return max(self.sparsities)


def as_schedule(schedule: Schedule | float) -> Schedule:
    """``schedule`` itself, or ``Constant(schedule)`` for a bare number.

    Example:
        >>> as_schedule(0.5)
        Constant(sparsity=0.5, start_epoch=0)
    """
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, numbers.Real) and not isinstance(schedule, bool):
        try:
            return Constant(float(schedule))
        except ValueError as err:
            raise ValueError(f"`schedule={schedule!r}`: {err}") from None
    raise ValueError(f"Expected `schedule` to be a Schedule or a sparsity in [0, 1], got {schedule!r}")
