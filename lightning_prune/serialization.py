"""Masks in checkpoints: bit-packing, and plain weights in a checkpoint's ``state_dict``.

Example:
    >>> import torch
    >>> mask = torch.tensor([[True, False, True], [False, True, True]])
    >>> packed = pack_mask(mask)
    >>> packed.dtype, packed.numel()
    (torch.uint8, 1)
    >>> torch.equal(unpack_mask(packed, mask.shape), mask)
    True
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping

import torch
from torch import Tensor

from lightning_prune.masks import one_cpu_thread

__all__ = ["mask_checksum", "pack_mask", "plain_state_dict", "unpack_mask"]

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_mask(mask: Tensor) -> Tensor:
    """A bool mask as a CPU ``uint8`` tensor of one bit per entry (row-major, most significant bit first)."""
    flat = mask.reshape(-1).to("cpu", torch.uint8)
    padded = torch.nn.functional.pad(flat, (0, -flat.numel() % 8))
    return (padded.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: Tensor, shape: Iterable[int]) -> Tensor:
    """The inverse of :func:`pack_mask`."""
    shape = torch.Size(shape)
    bits = packed.to("cpu", torch.uint8).view(-1, 1).bitwise_and(_BIT_WEIGHTS).ne(0).view(-1)
    return bits[: shape.numel()].view(shape)


@torch.no_grad()
def plain_state_dict(state_dict: MutableMapping[str, Tensor], keys: Iterable[str]) -> None:
    """Replace ``<key>_orig`` and ``<key>_mask`` by ``<key> = orig * mask``, in place, for each key.

    ``<key>`` takes ``<key>_orig``'s place: the keys come in the order of the plain module's.

    Example:
        >>> import torch
        >>> sd = {"w_orig": torch.tensor([1.0, 2.0]), "b": torch.zeros(1), "w_mask": torch.tensor([True, False])}
        >>> plain_state_dict(sd, ["w"])
        >>> sd
        {'w': tensor([1., 0.]), 'b': tensor([0.])}
    """
    plain = {key + "_orig": key for key in keys if key + "_orig" in state_dict and key + "_mask" in state_dict}
    if not plain:
        return
    masks = {key + "_mask": state_dict[key + "_mask"] for key in plain.values()}
    items = list(state_dict.items())
    state_dict.clear()  # an OrderedDict keeps its `_metadata`
    for name, value in items:
        if name in plain:
            state_dict[plain[name]] = value * masks[plain[name] + "_mask"].to(value.dtype)
        elif name not in masks:
            state_dict[name] = value


_CHUNK = 1 << 22
_HASH_PRIME = (1 << 31) - 1
_LOW32 = (1 << 32) - 1


def _mix(indices: Tensor) -> Tensor:
    """A 32-bit integer hash of each int64 index (xor-shift-multiply, 0x45D9F3B), each step within int64."""
    x = (indices ^ (indices >> 32)) & _LOW32
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _LOW32
    return (x >> 16) ^ x


def mask_checksum(masks: Iterable[Tensor]) -> Tensor:
    """Per mask: the number of surviving entries, the sum of their flat indices, and the sum of a hash of each
    (int64, on the masks' device).

    The index sum alone misses two sets with equal sums, such as rows {0, 3} against {1, 2} of a
    structured mask, and so does any polynomial in the indices for some sets; :func:`_mix` is not
    one, and its sum (modulo the prime ``2**31 - 1``) tells such sets apart but for a chance of
    about one in two billion. (Beyond 2**32 entries the index sum wraps around, alike on every rank.)

    Example:
        >>> import torch
        >>> mask_checksum([torch.tensor([True, False, False, True]), torch.tensor([False, True, True, False])])
        tensor([[         2,          3, 1605816902],
                [         2,          3,  399289920]])
    """
    sums = []
    offsets: Tensor | None = None  # 0 .. _CHUNK - 1, made once: fresh chunk-sized tensors cost page faults
    for mask in masks:
        flat = mask.reshape(-1)
        if offsets is None or offsets.device != flat.device or offsets.numel() < min(flat.numel(), _CHUNK):
            offsets = torch.arange(min(flat.numel(), _CHUNK), device=flat.device)
        count = torch.count_nonzero(flat)
        index_sum = torch.zeros((), dtype=torch.int64, device=flat.device)
        hashed = torch.zeros((), dtype=torch.int64, device=flat.device)
        with one_cpu_thread(flat.device):  # a dozen small ops a chunk
            for start in range(0, flat.numel(), _CHUNK):
                chunk = flat[start : start + _CHUNK]
                picked = offsets[: chunk.numel()][chunk]
                index_sum += picked.sum() + start * picked.numel()
                hashed = (hashed + _mix(picked + start).sum()) % _HASH_PRIME
        sums.append(torch.stack([count, index_sum, hashed]))
    return torch.stack(sums) if sums else torch.zeros(0, 3, dtype=torch.int64)
