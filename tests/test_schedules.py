"""Schedules: closed-form values and argument checks."""

from __future__ import annotations

from fractions import Fraction

import pytest

from lightning_prune.schedules import Constant, Explicit, Geometric, Linear, Polynomial, Schedule, as_schedule


def test_constant_single_event() -> None:
    assert [Constant(0.4, start_epoch=2).sparsity_at(e) for e in range(4)] == [None, None, 0.4, None]


def test_linear_every_n_and_end() -> None:
    s = Linear(0.9, start_epoch=1, end_epoch=6, initial_sparsity=0.1, every_n_epochs=2)
    values = {e: s.sparsity_at(e) for e in range(8)}
    assert [e for e, v in values.items() if v is not None] == [1, 3, 5, 6]
    assert values[1] == pytest.approx(0.1) and values[6] == pytest.approx(0.9)
    assert values[3] == pytest.approx(0.1 + 0.8 * 2 / 5)


def test_polynomial_is_zhu_gupta() -> None:
    s = Polynomial(final_sparsity=0.9, start_epoch=2, end_epoch=6, initial_sparsity=0.2, power=3)
    for epoch in range(2, 7):
        expected = 0.9 + (0.2 - 0.9) * (1 - (epoch - 2) / 4) ** 3
        assert s.sparsity_at(epoch) == pytest.approx(expected)
    assert s.sparsity_at(1) is None and s.sparsity_at(7) is None
    values = [s.sparsity_at(e) for e in range(2, 7)]
    assert values == sorted(values)


def test_polynomial_single_epoch_span() -> None:
    assert Polynomial(0.5, start_epoch=3, end_epoch=3).sparsity_at(3) == 0.5


def test_geometric_is_imp() -> None:
    s = Geometric(rate=0.2, every_n_epochs=3)
    assert [s.sparsity_at(e) for e in (0, 3, 6)] == [0.2, 0.36, 0.488]
    assert s.sparsity_at(1) is None
    capped = Geometric(rate=0.5, final_sparsity=0.8)
    assert [capped.sparsity_at(e) for e in range(4)] == [0.5, 0.75, 0.8, None]


def test_explicit_accepts_yaml_string_keys() -> None:
    s = Explicit({"0": 0.1, "3": 0.5})
    assert [s.sparsity_at(e) for e in range(4)] == [0.1, None, None, 0.5]


def test_numpy_scalars_are_numbers() -> None:
    """Values computed with NumPy are taken, and kept as Python's own numbers."""
    np = pytest.importorskip("numpy")
    ramp = Polynomial(np.float32(0.75), np.int64(1), np.int64(3), power=np.float64(2.0), every_n_epochs=np.int64(1))
    plain = Polynomial(0.75, 1, 3, power=2.0)
    assert [ramp.sparsity_at(e) for e in range(5)] == [plain.sparsity_at(e) for e in range(5)]
    # a whole power is kept as an int (its ramp is computed exactly)
    assert type(ramp.start_epoch) is int and type(ramp.final_sparsity) is float and type(ramp.power) is int
    explicit = Explicit({np.int64(1): np.float32(0.25)})
    assert explicit.sparsities == {1: 0.25} and type(next(iter(explicit.sparsities))) is int
    assert repr(as_schedule(np.float64(0.5))) == "Constant(sparsity=0.5, start_epoch=0)"
    assert Constant(np.float32(0.5), start_epoch=np.int32(2)).sparsity_at(2) == 0.5


@pytest.mark.parametrize(
    ("build", "match"),
    [
        pytest.param(lambda: Constant(1.5), r"`sparsity` in \[0, 1\], got 1.5", id="constant-high"),
        pytest.param(lambda: Constant(float("nan")), "`sparsity`", id="constant-nan"),
        pytest.param(lambda: Constant(0.5, start_epoch=-1), "`start_epoch`", id="negative-epoch"),
        pytest.param(lambda: Linear(0.5, 3, 2), "`end_epoch`", id="end-before-start"),
        pytest.param(lambda: Linear(0.3, 0, 2, initial_sparsity=0.5), "never regrow", id="decreasing"),
        pytest.param(lambda: Polynomial(0.5, 0, 2, power=0), "`power`", id="power"),
        pytest.param(lambda: Polynomial(0.5, 0, 2, every_n_epochs=0), "`every_n_epochs`", id="every"),
        pytest.param(lambda: Geometric(rate=0.0), r"`rate` in \(0, 1\]", id="rate-zero"),
        pytest.param(lambda: Explicit({0: 0.5, 1: 0.4}), "non-decreasing", id="explicit-decreasing"),
        pytest.param(lambda: Explicit({}), "non-empty", id="explicit-empty"),
        pytest.param(lambda: Explicit({0: 1.2}), r"sparsities\[0\]", id="explicit-range"),
        pytest.param(lambda: as_schedule(-0.1), r"`sparsity` in \[0, 1\], got -0.1", id="bare-negative"),
        pytest.param(lambda: as_schedule("0.5"), "`schedule`", id="bare-string"),
    ],
)
def test_bad_arguments(build, match) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_custom_schedule_subclass() -> None:
    class EveryOther(Schedule):
        def sparsity_at(self, epoch: int) -> float | None:
            return 0.1 * epoch if epoch % 2 == 0 else None

    assert as_schedule(EveryOther()).sparsity_at(4) == pytest.approx(0.4)


@pytest.mark.parametrize("cls", [Linear, Polynomial])
def test_ramps_end_exactly_at_final_sparsity(cls) -> None:
    """``s_i + (s_f - s_i) * 1.0`` is 0.30000000000000004 for 0.03 -> 0.3: one entry in 35 too many."""
    for initial, final in ((0.03, 0.3), (0.1, 0.7), (0.07, 0.29), (0.0, 0.9)):
        schedule = cls(final, start_epoch=0, end_epoch=3, initial_sparsity=initial)
        assert schedule.sparsity_at(3) == final
        assert schedule.sparsity_at(0) == initial
    assert cls(0.3, start_epoch=2, end_epoch=2, initial_sparsity=0.03).sparsity_at(2) == 0.3


@pytest.mark.parametrize("power", [None, 1, 2, 3])
def test_ramps_between_their_ends_are_the_exact_value_rounded_once(power: int | None) -> None:
    """``Linear(0.1, 0, 7)`` after epoch 5 is 1/14, not 1/14 plus 2 ulps: 35 entries then prune
    ``round(2.5) = 2``, not 3."""
    assert Linear(0.1, start_epoch=0, end_epoch=7).sparsity_at(5) == 1 / 14
    for final in (0.07, 0.1, 0.15, 0.29, 0.55, 0.9):
        for initial in (0.0, 0.03):
            for end in range(1, 11):
                ramp = (
                    Linear(final, 0, end, initial_sparsity=initial)
                    if power is None
                    else Polynomial(final, 0, end, initial_sparsity=initial, power=power)
                )
                for epoch in range(end + 1):
                    t = Fraction(epoch, end)
                    progress = t if power is None else 1 - (1 - t) ** power
                    exact = Fraction(str(initial)) + (Fraction(str(final)) - Fraction(str(initial))) * progress
                    assert ramp.sparsity_at(epoch) == float(exact), (final, initial, end, epoch)


def test_a_whole_power_written_as_a_float_is_the_same_schedule() -> None:
    """YAML and the command line give `power: 3` as 3.0: the same exact ramp as the int."""
    for epoch in range(11):
        assert Polynomial(0.5, 0, 10, power=3.0).sparsity_at(epoch) == Polynomial(0.5, 0, 10).sparsity_at(epoch)
    assert Polynomial(0.5, 0, 10, power=3.0).sparsity_at(1) == 0.1355
