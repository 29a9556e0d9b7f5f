"""Seeded random numbers that leave the global RNG state as it was."""

from __future__ import annotations

import pytest
import torch

from lightning_prune.rng import seeded


def test_same_seed_same_draws_and_the_global_state_is_restored() -> None:
    torch.manual_seed(5)
    state = torch.get_rng_state()
    with seeded(11, [torch.zeros(3)]):
        first = torch.rand(4)
    with seeded(11, []):
        again = torch.rand(4)
    with seeded(12, []):
        other = torch.rand(4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), state)


def test_no_device_is_reseeded_behind_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """`torch.manual_seed` would also (lazily, before CUDA starts) reseed every CUDA device, which
    `fork_rng` restores only for the devices it is given."""
    calls: list[str] = []
    for name in ("manual_seed", "manual_seed_all"):
        monkeypatch.setattr(torch.cuda, name, lambda seed, name=name: calls.append(name))
    with seeded(3, [torch.zeros(1)]):
        torch.rand(1)
    assert calls == []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the check sees what it guards against
    assert calls == ["manual_seed_all"]
