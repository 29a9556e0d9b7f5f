"""Mask math: pure functions on tensors.

Everything here takes tensors and returns new boolean masks; nothing touches a module.
A mask is ``True`` where an entry survives and ``False`` where it is pruned.

The central piece is :func:`prune_smallest`: given scores and the current masks of one or
more tensors, it prunes the lowest-scoring surviving entries until exactly ``n_pruned``
entries are pruned in total. It finds the exact threshold with a radix select on the bit
patterns of the scores' magnitudes (non-negative floats order like their bit patterns read
as integers), 16 bits a pass, counting with ``bincount`` over fixed-size chunks, so large
models are never concatenated (small ones are, where one copy costs less than a few ops per
tensor). Scores are compared in float32 (two passes), or in float64 (four passes) when any
of them is float64, so that no two distinct scores become a tie.
Ties at the threshold are broken by position: earlier tensors first, then row-major order
within a tensor.

Example:
    >>> import torch
    >>> w = torch.tensor([[0.3, -0.1], [0.2, 0.4]])
    >>> prune_smallest([w], [torch.ones(2, 2, dtype=torch.bool)], n_pruned=2)[0]
    tensor([[ True, False],
            [False,  True]])
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "count_for",
    "expand_slices",
    "one_cpu_thread",
    "prune_smallest",
    "random_scores",
    "slice_alive",
    "slice_norms",
]

_CHUNK = 1 << 20
# On a GPU each op costs a launch: 4M-entry chunks halved one event over 192M entries on an H200
# (85 -> 43 ms) for 0.3 more bytes per entry of peak memory.
_ACCELERATOR_CHUNK = 1 << 22
_SMALL = 1 << 17  # up to this many entries in all, one concatenated copy is faster (0.6 ms of 1.7 at 61k on CPU)
_DIGIT = 16  # bits per radix pass


@dataclass(frozen=True)
class _KeyType:
    """How scores of one selection become integer sort keys: their float type and its bit pattern."""

    scores: torch.dtype
    bits: torch.dtype
    inf_bits: int  # bit pattern of +inf; NaN scores are treated as +inf

    @property
    def shifts(self) -> range:
        """The shift of each radix digit, most significant first."""
        return range(torch.finfo(self.scores).bits - _DIGIT, -1, -_DIGIT)

    def bins(self, shift: int) -> int:
        """Histogram size of the digit at ``shift``: the top one holds every key's high bits."""
        return ((self.inf_bits + 1) >> shift) + 1 if shift == self.shifts[0] else 1 << _DIGIT


_FLOAT32 = _KeyType(torch.float32, torch.int32, 0x7F800000)
_FLOAT64 = _KeyType(torch.float64, torch.int64, 0x7FF0000000000000)


def _key_type(scores: Sequence[Tensor]) -> _KeyType:
    """float64 keys if any score is float64 (float32 would merge distinct values), else float32."""
    return _FLOAT64 if any(s.dtype == torch.float64 for s in scores) else _FLOAT32


def count_for(sparsity: float, n: int) -> int:
    """Number of entries (or slices) out of ``n`` that are zero at ``sparsity``: ``round(sparsity * n)``.

    Example:
        >>> count_for(0.5, 7), count_for(0.9, 10)
        (4, 9)
    """
    return round(sparsity * n)


class _Scratch:
    """Chunk-sized buffers that every chunk of one selection reuses.

    Fresh temporaries of a few MB each cost page faults on every chunk on the CPU, where the
    allocator hands such blocks back to the system when they are freed: over 200M entries that
    was about a million faults, 2.6 s of system time in a 4 s selection.
    """

    def __init__(self, size: int, device: torch.device, kind: _KeyType) -> None:
        self.kind = kind
        self.magnitudes = torch.empty(size, dtype=kind.scores, device=device)  # the keys are their bits
        self.shifted = torch.empty(size, dtype=kind.bits, device=device)
        self.flags = torch.empty(size, dtype=torch.bool, device=device)
        self.more_flags = torch.empty(size, dtype=torch.bool, device=device)

    @classmethod
    def for_chunks_of(cls, alive: Sequence[Tensor], kind: _KeyType) -> _Scratch:
        return cls(max(min(a.numel(), _chunk_size(a)) for a in alive), alive[0].device, kind)


def _keys(scores: Tensor, alive: Tensor | None, largest: bool, scratch: _Scratch | None = None) -> Tensor:
    """Integer sort keys: 0 for pruned entries, then surviving entries by score (or reversed).

    ``alive=None`` means that every entry survives. With ``scratch`` the keys are written into its
    buffers (valid until the next call) in its key type; without, the key type is the one of
    ``scores`` alone.
    """
    if scratch is None:
        kind = _key_type([scores])
        magnitudes = scores.to(kind.scores).abs()
    else:
        kind = scratch.kind
        magnitudes, scores = scratch.magnitudes[: scores.numel()], scores.detach()  # `out=` refuses autograd
        if scores.dtype == kind.scores:
            torch.abs(scores, out=magnitudes)
        else:
            magnitudes.copy_(scores).abs_()
    bits = magnitudes.view(kind.bits).clamp_(max=kind.inf_bits)
    keys = bits.neg_().add_(kind.inf_bits + 1) if largest else bits.add_(1)
    # A multiply, not `masked_fill_`: on the CPU that one branches per entry, 8-10x slower on
    # a mask with 30-50% pruned (2.2-2.9 against 0.27 ms per 1M entries).
    return keys if alive is None else keys.mul_(alive)


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU ops on one thread within the block, where ``device`` is the CPU.

    For loops of many small ops over fixed-size chunks: each op of 1M entries is one parallel region,
    and while another process holds a core, every region waits for the thread that lost it. One
    global event over 10M entries took 0.04 s on two idle threads, 0.08 s on one, and 0.16-2.4 s
    on two beside one busy process; on one thread it stays at 0.08 s.

    ``torch.set_num_threads`` also sets the default that a thread takes the first time it runs a
    torch op: a thread of the caller's that first does so within the block keeps one thread.

    Example:
        >>> import torch
        >>> threads = torch.get_num_threads()
        >>> with one_cpu_thread(torch.device("cpu")):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == threads
        True
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _chunk_size(t: Tensor) -> int:
    return _CHUNK if t.device.type == "cpu" else _ACCELERATOR_CHUNK


def _chunks(scores: Sequence[Tensor], alive: Sequence[Tensor | None]):
    """Chunks of each score tensor with the same chunks of its mask (``None`` for a mask without a pruned entry)."""
    for s, a in zip(scores, alive):
        flat_s, chunk = s.reshape(-1), _chunk_size(s)
        for start in range(0, flat_s.numel(), chunk):
            yield flat_s[start : start + chunk], None if a is None else a.reshape(-1)[start : start + chunk]


def _histogram(keys: Tensor, bins: int, out: Tensor | None) -> Tensor:
    counts = torch.bincount(keys, minlength=bins)
    return counts if out is None else out.add_(counts)


def _position(cumulative: Tensor, k: int) -> tuple[int, int]:
    """First bin whose cumulative count reaches ``k`` and the count strictly below it."""
    index = int(torch.searchsorted(cumulative, torch.tensor([k], device=cumulative.device)).item())
    below = int(cumulative[index - 1].item()) if index > 0 else 0
    return index, below


def _sort_limit(device: torch.device) -> int:
    """Up to how many entries in all :func:`prune_smallest` ranks by one stable sort on ``device``.

    On an accelerator the radix passes wait for the device three times or more; one sort of a
    small selection does not wait at all. On the CPU the radix passes are as fast or faster.
    """
    return 0 if device.type == "cpu" else _SMALL


def _split_like(flat: Tensor, alive: Sequence[Tensor]) -> list[Tensor]:
    """``flat`` cut into tensors shaped like ``alive``, each with its own storage."""
    return [part.view(a.shape).clone() for part, a in zip(flat.split([a.numel() for a in alive]), alive)]


def _prune_by_sort(scores: Sequence[Tensor], alive: Sequence[Tensor], n_pruned: int, largest: bool) -> list[Tensor]:
    """:func:`prune_smallest` by a stable sort of all keys at once (pruned entries first, ties by position)."""
    kind = _key_type(scores)
    keys = torch.cat([_keys(s.reshape(-1).to(kind.scores), a.reshape(-1), largest) for s, a in zip(scores, alive)])
    new = torch.cat([a.reshape(-1) for a in alive])
    new[torch.sort(keys, stable=True).indices[:n_pruned]] = False
    return _split_like(new, alive)


def prune_smallest(
    scores: Sequence[Tensor],
    alive: Sequence[Tensor],
    n_pruned: int,
    *,
    largest: bool = False,
) -> list[Tensor]:
    """Prune the lowest-scoring surviving entries until exactly ``n_pruned`` are pruned in total.

    Args:
        scores: one score tensor per target; only the magnitude ``|score|`` counts.
        alive: the current boolean masks, same shapes as ``scores``.
        n_pruned: how many entries, counted over all tensors together and including those
            already pruned, are pruned afterwards. Already-pruned entries always stay pruned.
        largest: prune the highest scores first instead of the lowest.

    Returns:
        New boolean masks; the inputs are not modified.

    Example:
        >>> import torch
        >>> a, b = torch.tensor([1.0, 5.0, 2.0]), torch.tensor([4.0, 0.5])
        >>> ones = [torch.ones(3, dtype=torch.bool), torch.ones(2, dtype=torch.bool)]
        >>> [m.tolist() for m in prune_smallest([a, b], ones, n_pruned=3)]
        [[False, True, False], [True, False]]
    """
    if len(scores) != len(alive):
        raise ValueError(f"Expected one mask per score tensor, got {len(alive)} masks for {len(scores)} tensors")
    total = sum(a.numel() for a in alive)
    if not 0 <= n_pruned <= total:
        raise ValueError(f"Expected `n_pruned` in [0, {total}], got {n_pruned}")
    if alive and total <= _sort_limit(alive[0].device):
        return _prune_by_sort(scores, alive, n_pruned, largest)
    kind = _key_type(scores)
    if 1 < len(alive) and total <= _SMALL:  # concatenated, each pass is a few ops instead of a few per tensor
        flat_s = torch.cat([s.reshape(-1).to(kind.scores) for s in scores])
        flat = prune_smallest([flat_s], [torch.cat([a.reshape(-1) for a in alive])], n_pruned, largest=largest)[0]
        return _split_like(flat, alive)
    if not alive:
        return []
    with one_cpu_thread(alive[0].device):
        return _prune_in_chunks(scores, alive, n_pruned, largest, kind)


def _prune_in_chunks(
    scores: Sequence[Tensor], alive: Sequence[Tensor], n_pruned: int, largest: bool, kind: _KeyType
) -> list[Tensor]:
    """:func:`prune_smallest` by a radix select over fixed-size chunks (see the module's docstring)."""
    survivors = [int(torch.count_nonzero(a).item()) for a in alive]
    if n_pruned <= sum(a.numel() for a in alive) - sum(survivors):
        return [a.clone() for a in alive]
    # a mask without a pruned entry (each one, at a first event) is left out of the keys: no multiply by it
    partial = [None if n == a.numel() else a for a, n in zip(alive, survivors)]

    scratch = _Scratch.for_chunks_of(alive, kind)
    # One pass per digit: the digit of the threshold is the bin where the count of keys that
    # share its higher digits, added to the count below them, reaches `n_pruned`.
    threshold = below = 0
    for level, shift in enumerate(kind.shifts):
        hist: Tensor | None = None
        for s, a in _chunks(scores, partial):
            keys = _keys(s, a, largest, scratch)
            n = keys.numel()
            if level == 0:
                digits = torch.bitwise_right_shift(keys, shift, out=scratch.shifted[:n])
            else:
                higher = torch.bitwise_right_shift(keys, shift + _DIGIT, out=scratch.shifted[:n])
                in_bin = torch.eq(higher, threshold, out=scratch.more_flags[:n])
                digits = keys[in_bin]
                digits = (digits >> shift if shift else digits) & ((1 << _DIGIT) - 1)
            hist = _histogram(digits, kind.bins(shift), hist)
        assert hist is not None
        digit, below_digit = _position(hist.cumsum(0), n_pruned - below)
        threshold, below = threshold << _DIGIT | digit, below + below_digit
    ties_left = n_pruned - below

    out = []
    for s, a, p in zip(scores, alive, partial):
        flat_s, new = s.reshape(-1), a.reshape(-1).clone()
        chunk = _chunk_size(new)
        for start in range(0, flat_s.numel(), chunk):
            kept = new[start : start + chunk]
            keys = _keys(flat_s[start : start + chunk], None if p is None else kept, largest, scratch)
            n = keys.numel()
            prune = torch.lt(keys, threshold, out=scratch.flags[:n])
            if ties_left > 0:
                tied = torch.eq(keys, threshold, out=scratch.more_flags[:n])
                n_tied = int(torch.count_nonzero(tied).item())
                if n_tied > ties_left:  # the first `ties_left` of them, by position
                    tied &= tied.cumsum(0, dtype=torch.int64) <= ties_left
                prune |= tied
                ties_left -= min(ties_left, n_tied)
            kept &= prune.logical_not_()
        out.append(new.view(a.shape))
    return out


def _other_dims(t: Tensor, dim: int) -> list[int]:
    return [d for d in range(t.dim()) if d != dim % t.dim()]


def slice_alive(mask: Tensor, dim: int) -> Tensor:
    """Which slices along ``dim`` still hold a surviving entry (torch's structured criterion).

    Example:
        >>> import torch
        >>> slice_alive(torch.tensor([[True, False], [False, False]]), dim=0)
        tensor([ True, False])
    """
    return mask.any(dim=_other_dims(mask, dim)) if mask.dim() > 1 else mask.clone()


def slice_norms(t: Tensor, norm: float, dim: int, *, normalize: bool = False) -> Tensor:
    """Ln norm of every slice of ``t`` along ``dim``, in float32 (float64 for a float64 ``t``).

    With ``normalize=True`` each norm is divided by ``m ** (1 / norm)``, ``m`` the number of
    entries in a slice: the power mean of the slice's magnitudes, which is what global
    structured pruning compares across layers of different sizes (for ``norm=2`` the root
    mean square, for ``norm=1`` the mean absolute value, for ``inf`` the maximum, for ``-inf``
    the minimum); for ``norm=0`` (the count of nonzero entries) by ``m``: the fraction nonzero.
    Where the norm overflows (``norm`` near 0 raises large sums to the power ``1 / norm``), the
    power mean is computed as such, ``mean(|t| ** norm) ** (1 / norm)``, which stays within the
    magnitudes.

    Example:
        >>> import torch
        >>> slice_norms(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), 2, dim=0)
        tensor([5., 1.])
    """
    wide = t.to(torch.promote_types(t.dtype, torch.float32))
    norms = torch.linalg.vector_norm(wide, ord=norm, dim=_other_dims(t, dim))
    if normalize and not math.isinf(norm):
        per_slice = t.numel() // max(t.shape[dim], 1)
        if norm == 0:
            return norms / per_slice
        try:
            norms = norms / per_slice ** (1.0 / norm)
        except OverflowError:  # for a norm near 0 (the sum's root overflowed too)
            norms = torch.full_like(norms, math.nan)
        if not bool(torch.isfinite(norms).all()):  # the same power mean, which no finite magnitude overflows (in
            means = t.double().abs().pow(norm).mean(dim=_other_dims(t, dim))  # float64: the root scales its error
            norms = means.pow(1.0 / norm).to(norms.dtype)  # by 1 / |norm|)
    return norms


def expand_slices(mask: Tensor, keep: Tensor, dim: int) -> Tensor:
    """``mask`` with every slice along ``dim`` that ``keep`` marks ``False`` zeroed.

    Example:
        >>> import torch
        >>> expand_slices(torch.ones(2, 2, dtype=torch.bool), torch.tensor([False, True]), dim=1)
        tensor([[False,  True],
                [False,  True]])
    """
    shape = [1] * mask.dim()
    shape[dim % mask.dim()] = -1
    return mask & keep.view(shape)


def random_scores(
    alive: Tensor, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Uniform scores for the surviving entries, drawn as torch's random methods draw them.

    ``torch.rand`` is called once, on the CPU, for exactly the surviving entries in row-major
    order and in ``dtype`` (what ``torch.nn.utils.prune`` does on a CPU tensor:
    ``random_unstructured`` draws in the weight's dtype, ``random_structured`` in float32), so
    the same seed gives the same mask; the scores are then scattered back and moved to
    ``alive``'s device. Pruned entries score 0. (Draws in float16 or bfloat16 tie often; ties
    are broken by position here, and in no promised order by torch's ``topk``.)

    Example:
        >>> import torch
        >>> random_scores(torch.tensor([True, False, True]), torch.Generator().manual_seed(0))
        tensor([0.4963, 0.0000, 0.7682])
    """
    cpu_alive = alive.reshape(-1).cpu()
    drawn = torch.rand(int(torch.count_nonzero(cpu_alive).item()), generator=generator, dtype=dtype)
    scores = torch.zeros(cpu_alive.shape, dtype=dtype)
    scores[cpu_alive] = drawn
    return scores.view(alive.shape).to(alive.device)
