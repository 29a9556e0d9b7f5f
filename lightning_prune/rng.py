"""Random numbers under a given seed, with the global RNG state left as it was.

``torch.manual_seed`` inside ``torch.random.fork_rng`` would reseed every device's generator
while ``fork_rng`` restores only the ones it is given; :func:`seeded` seeds exactly the ones it
restores: the CPU generator and those of the accelerator devices the given tensors live on.

Example:
    >>> import torch
    >>> before = torch.get_rng_state()
    >>> with seeded(7, [torch.zeros(1)]):
    ...     a = torch.rand(2)
    >>> with seeded(7, []):
    ...     b = torch.rand(2)
    >>> torch.equal(a, b), torch.equal(torch.get_rng_state(), before)
    (True, True)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["seeded"]


@contextmanager
def seeded(seed: int, tensors: Iterable[Tensor]) -> Iterator[None]:
    """Inside, the CPU generator and those of ``tensors``' accelerator devices start from ``seed``."""
    accelerators = {t.device for t in tensors if t.device.type != "cpu"}
    device_type = min(d.type for d in accelerators) if accelerators else "cuda"
    module = torch.get_device_module(device_type)
    indices = sorted({d.index if d.index is not None else 0 for d in accelerators if d.type == device_type})
    with torch.random.fork_rng(devices=indices, device_type=device_type):
        torch.random.default_generator.manual_seed(seed)
        for index in indices:
            generators = getattr(module, "default_generators", None)
            if generators is not None:  # CUDA, XPU: one generator per device
                generators[index].manual_seed(seed)
            else:  # one device (MPS)
                module.manual_seed(seed)
        yield
