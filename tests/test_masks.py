"""Mask math against exact references: sort-based selection and torch.nn.utils.prune."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_prune import masks as M


def _reference(
    scores: list[torch.Tensor], alive: list[torch.Tensor], n_pruned: int, largest: bool
) -> list[torch.Tensor]:
    """Stable-sort reference: dead entries first, then by |score| (or reversed), ties by position.

    Scores are compared in float64 if any is float64, else in float32."""
    dtype = torch.float64 if any(s.dtype == torch.float64 for s in scores) else torch.float32
    flat_s = torch.cat([s.reshape(-1).to(dtype).abs() for s in scores])
    flat_a = torch.cat([a.reshape(-1) for a in alive])
    order = torch.sort(-flat_s if largest else flat_s, stable=True).indices
    order = order[torch.sort(flat_a[order].to(torch.uint8), stable=True).indices]  # dead ones first
    keep = torch.ones_like(flat_a)
    keep[order[:n_pruned]] = False
    keep &= flat_a
    return [part.view(a.shape) for part, a in zip(keep.split([a.numel() for a in alive]), alive)]


@pytest.fixture(params=["concatenated", "per-tensor", "sorted"])
def layout(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with small totals concatenated first (the CPU default), passed over tensor by tensor,
    and ranked by one stable sort (the accelerator default)."""
    if request.param == "per-tensor":
        monkeypatch.setattr(M, "_SMALL", 0)
    if request.param == "sorted":
        monkeypatch.setattr(M, "_sort_limit", lambda device: M._SMALL)
    return request.param


def _per_tensor(*args, **kwargs) -> list[torch.Tensor]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(M, "_SMALL", 0)
        return M.prune_smallest(*args, **kwargs)


def _sorted(*args, **kwargs) -> list[torch.Tensor]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(M, "_sort_limit", lambda device: M._SMALL)
        return M.prune_smallest(*args, **kwargs)


@pytest.mark.parametrize("largest", [pytest.param(False, id="smallest"), pytest.param(True, id="largest")])
def test_prune_smallest_matches_sort_with_ties(layout: str, largest: bool) -> None:
    g = torch.Generator().manual_seed(0)
    scores = [torch.randint(-3, 4, (7, 5), generator=g).float(), torch.randint(-3, 4, (11,), generator=g).float()]
    alive = [torch.rand(7, 5, generator=g) > 0.3, torch.rand(11, generator=g) > 0.3]
    dead = sum(int((~a).sum()) for a in alive)
    for n in range(dead, 46 + 1):
        got = M.prune_smallest(scores, alive, n, largest=largest)
        for g_, r in zip(got, _reference(scores, alive, n, largest)):
            assert torch.equal(g_, r), n


def test_prune_smallest_takes_parameters_that_require_grad(layout: str) -> None:
    """Scores straight from ``nn.Parameter``s, with grad mode on: same masks as their detached values."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(11).double())]
    alive = [torch.rand(7, 5) > 0.3, torch.ones(11, dtype=torch.bool)]
    got = M.prune_smallest(params, alive, 20)
    assert all(torch.equal(a, b) for a, b in zip(got, _reference([p.detach() for p in params], alive, 20, False)))


def test_prune_smallest_across_chunks(layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(M, "_CHUNK", 16)  # ties and thresholds straddle chunk borders
    scores = [torch.tensor([1.0, 2.0, 2.0, 0.5] * 13), torch.tensor([2.0] * 21)]
    alive = [torch.ones(52, dtype=torch.bool), torch.ones(21, dtype=torch.bool)]
    for n in (0, 13, 20, 30, 50, 73):
        got = M.prune_smallest(scores, alive, n)
        assert all(torch.equal(a, b) for a, b in zip(got, _reference(scores, alive, n, False)))


@pytest.mark.parametrize("largest", [False, True])
def test_radix_passes_over_many_chunks_with_real_scores(largest: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stable-sort masks for a first event and later ones, over 257-entry chunks, with scores
    of every magnitude, zeros, inf, a denormal and a run of ties."""
    monkeypatch.setattr(M, "_SMALL", 0)
    monkeypatch.setattr(M, "_CHUNK", 257)
    g = torch.Generator().manual_seed(1)
    magnitudes = 10.0 ** torch.randint(-30, 30, (40, 50), generator=g)
    scores = [torch.randn(40, 50, generator=g) * magnitudes, torch.randn(3000, generator=g)]
    scores[1][::7] = 0.125  # a run of ties
    scores[0][0, :4] = torch.tensor([0.0, -0.0, float("inf"), 1e-45])
    alive = [torch.ones(40, 50, dtype=torch.bool), torch.rand(3000, generator=g) > 0.3]
    for n in (1200, 2500, 3800, 4999):
        got = M.prune_smallest(scores, alive, n, largest=largest)
        for g_, r in zip(got, _reference(scores, alive, n, largest)):
            assert torch.equal(g_, r), n
        alive = got


def test_float64_scores_keep_differences_float32_loses(layout: str) -> None:
    """Distinct float64 magnitudes that float32 would merge, flush to zero or round to inf stay distinct."""
    scores = [
        torch.tensor([1e-50, 1e-60, 1.0 + 1e-12, 1.0], dtype=torch.float64),
        torch.tensor([1e300, 1e200, 3.0], dtype=torch.float64),
    ]
    alive = [torch.ones(4, dtype=torch.bool), torch.ones(3, dtype=torch.bool)]
    for largest in (False, True):
        for n in range(8):
            got = M.prune_smallest(scores, alive, n, largest=largest)
            assert all(torch.equal(a, b) for a, b in zip(got, _reference(scores, alive, n, largest))), (largest, n)
    assert M.prune_smallest(scores, alive, 1)[0].tolist() == [True, False, True, True]
    assert M.prune_smallest(scores, alive, 3)[0].tolist() == [False, False, True, False]
    assert M.prune_smallest(scores, alive, 1, largest=True)[1].tolist() == [False, True, True]


@pytest.mark.parametrize("largest", [False, True])
def test_radix_passes_in_float64_over_many_chunks(largest: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four 16-bit digits: scores that differ only in their last bits, over 600 orders of magnitude,
    with float32 scores beside them, a first event and later ones, equal the stable sort in float64."""
    monkeypatch.setattr(M, "_SMALL", 0)
    monkeypatch.setattr(M, "_CHUNK", 257)
    g = torch.Generator().manual_seed(2)
    near_one = 1.0 + torch.randint(0, 64, (40, 50), generator=g, dtype=torch.float64) * 2.0**-52
    wide = torch.randn(3000, generator=g, dtype=torch.float64)
    wide *= 10.0 ** torch.randint(-300, 300, (3000,), generator=g, dtype=torch.float64)
    wide[::11] = 1.0 + 2.0**-52  # ties with the run above
    scores = [near_one, wide, torch.randn(500, generator=g)]
    alive = [
        torch.ones(40, 50, dtype=torch.bool),
        torch.rand(3000, generator=g) > 0.3,
        torch.ones(500, dtype=torch.bool),
    ]
    for n in (1500, 2700, 4000, 5499):
        got = M.prune_smallest(scores, alive, n, largest=largest)
        for g_, r in zip(got, _reference(scores, alive, n, largest)):
            assert torch.equal(g_, r), n
        alive = got


def test_prune_smallest_never_revives_and_leaves_inputs(layout: str) -> None:
    scores = [torch.tensor([0.0, 9.0, 1.0, 9.0]), torch.tensor([[5.0, 0.5]])]
    alive = [torch.tensor([True, False, True, False]), torch.tensor([[True, True]])]
    before = [a.clone() for a in alive]
    out = M.prune_smallest(scores, alive, 2)
    assert all(torch.equal(o, b) and torch.equal(a, b) for o, a, b in zip(out, alive, before))
    out = M.prune_smallest(scores, alive, 4)
    assert out[0].tolist() == [False, False, True, False] and out[1].tolist() == [[True, False]]
    assert all(torch.equal(a, b) for a, b in zip(alive, before)), "inputs modified"
    assert out[0].untyped_storage().data_ptr() != out[1].untyped_storage().data_ptr(), "masks share storage"


def test_prune_smallest_mixed_dtypes(layout: str) -> None:
    """Scores of different dtypes rank together by their float32 magnitudes."""
    scores = [torch.tensor([0.25, -3.0], dtype=torch.float16), torch.tensor([1.0, 0.5], dtype=torch.float64)]
    alive = [torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)]
    out = M.prune_smallest(scores, alive, 2)
    assert out[0].tolist() == [False, True] and out[1].tolist() == [True, False]


def test_chunk_loops_run_on_one_cpu_thread_and_give_the_threads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small ops, each a parallel region that waits for a thread another process holds: one thread."""
    monkeypatch.setattr(M, "_SMALL", 0)
    monkeypatch.setattr(M, "_CHUNK", 64)
    seen = []
    histogram = M._histogram

    def spy(*args):
        seen.append(torch.get_num_threads())
        return histogram(*args)

    monkeypatch.setattr(M, "_histogram", spy)
    threads = torch.get_num_threads()
    scores = [torch.randn(500, generator=torch.Generator().manual_seed(0))]
    alive = [torch.ones(500, dtype=torch.bool)]
    try:
        torch.set_num_threads(2)
        got = M.prune_smallest(scores, alive, 123)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
        assert torch.equal(got[0], _reference(scores, alive, 123, False)[0])

        def fail(*args):
            raise RuntimeError("out of memory")

        monkeypatch.setattr(M, "_histogram", fail)
        with pytest.raises(RuntimeError, match="out of memory"):
            M.prune_smallest(scores, alive, 123)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_prune_smallest_of_no_tensors() -> None:
    assert M.prune_smallest([], [], 0) == []


def test_prune_smallest_handles_nan_inf_and_negative_zero() -> None:
    scores = [torch.tensor([float("nan"), float("inf"), -0.0, 0.0, -5.0])]
    out = M.prune_smallest(scores, [torch.ones(5, dtype=torch.bool)], 3)
    assert out[0].tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("n", [-1, 6])
def test_prune_smallest_rejects_impossible_counts(n: int) -> None:
    with pytest.raises(ValueError, match="n_pruned"):
        M.prune_smallest([torch.zeros(5)], [torch.ones(5, dtype=torch.bool)], n)


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=3), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    fractions=st.lists(st.floats(0, 1), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_counts_exact_and_monotone(shapes, dtype, fractions, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = [torch.randn(*s, generator=g).to(dtype) for s in shapes]
    alive = [torch.ones(*s, dtype=torch.bool) for s in shapes]
    total = sum(a.numel() for a in alive)
    target = 0
    for fraction in sorted(fractions):
        target = max(target, M.count_for(fraction, total))
        new = M.prune_smallest(scores, alive, target)
        assert sum(int((~m).sum()) for m in new) == target
        assert all(not (m & ~a).any() for m, a in zip(new, alive)), "a pruned entry came back"
        assert all(torch.equal(a, b) for a, b in zip(new, M.prune_smallest(scores, alive, target)))
        assert all(torch.equal(a, b) for a, b in zip(new, _per_tensor(scores, alive, target))), "layouts differ"
        assert all(torch.equal(a, b) for a, b in zip(new, _sorted(scores, alive, target))), "sort differs"
        alive = new


def test_slice_helpers() -> None:
    mask = torch.ones(3, 2, 2, dtype=torch.bool)
    mask[1] = False
    assert M.slice_alive(mask, 0).tolist() == [True, False, True]
    t = torch.arange(12.0).view(3, 4)
    assert torch.allclose(M.slice_norms(t, 2, 0), torch.linalg.vector_norm(t, dim=1))
    assert torch.allclose(M.slice_norms(t, 2, 0, normalize=True), torch.linalg.vector_norm(t, dim=1) / 2)
    assert torch.allclose(M.slice_norms(t, float("inf"), 1, normalize=True), t.abs().amax(dim=0))
    kept = M.expand_slices(torch.ones(2, 3, dtype=torch.bool), torch.tensor([True, False, True]), dim=-1)
    assert kept.tolist() == [[True, False, True], [True, False, True]]


@pytest.mark.parametrize("norm", [0.003, 0.02, -0.001, -0.5, 0.5, 2.0])
def test_normalized_slice_norms_are_power_means_for_any_norm(norm: float) -> None:
    """Global structured pruning compares power means; near norm 0 the norm's root overflows, the mean does not."""
    torch.manual_seed(0)
    for t in (torch.randn(8, 3, 3, 3), torch.randn(4, 8)):
        scores = M.slice_norms(t, norm, 0, normalize=True)
        expected = t.double().abs().pow(norm).mean(dim=list(range(1, t.dim()))).pow(1 / norm)
        torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=0)


def test_random_scores_follow_torch_rng() -> None:
    alive = torch.tensor([[True, False], [True, True]])
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    scores = M.random_scores(alive)
    assert torch.equal(scores[alive], expected) and scores[~alive].eq(0).all()
    torch.manual_seed(3)
    expected = torch.rand(3, dtype=torch.float64)  # not the float32 draws widened
    torch.manual_seed(3)
    scores = M.random_scores(alive, dtype=torch.float64)
    assert scores.dtype == torch.float64 and torch.equal(scores[alive], expected)
