"""``DigitsDataModule``: scikit-learn's bundled handwritten digits (1,797 8x8 images), no download."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
import torch.nn.functional as F
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

__all__ = ["DigitsDataModule", "EpochShuffle"]


class EpochShuffle(RandomSampler):
    """The training-set order of each epoch, a function of ``seed`` and the epoch alone.

    A ``DataLoader(shuffle=True, generator=...)`` draws every epoch's order from one generator that
    a resumed ``fit`` starts afresh, so epoch ``e`` of a resumed run would be shuffled like epoch
    0; Lightning calls :meth:`set_epoch` at every epoch start, and a resumed run sees the orders of
    an uninterrupted one. They are the orders that such a ``DataLoader`` gives with
    ``torch.Generator().manual_seed(seed)`` when every epoch runs to its end (each draws a worker
    seed, the permutation, and one more permutation as its iterator ends).
    Under DDP Lightning swaps it, as any ``RandomSampler``, for a ``DistributedSampler``.

    Example:
        >>> sampler = EpochShuffle(range(5), seed=0)
        >>> sampler.set_epoch(2)
        >>> first = list(sampler)
        >>> sampler.set_epoch(0); sampler.set_epoch(2)
        >>> list(sampler) == first, sorted(first)
        (True, [0, 1, 2, 3, 4])
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0
        self._next: tuple[int, Tensor] | None = None  # (an epoch, the generator state it starts from)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        n, generator = len(self.data_source), torch.Generator()
        start = self._next if self._next is not None and self._next[0] <= self.epoch else None
        if start is None:  # from the seed (a first epoch, or one before the last seen)
            start = (0, generator.manual_seed(self.seed).get_state())
        generator.set_state(start[1])
        for _ in range(start[0], self.epoch + 1):  # each epoch: a worker seed, its order, one more order
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            order = torch.randperm(n, generator=generator)
            torch.randperm(n, generator=generator)
        self._next = (self.epoch + 1, generator.get_state())  # the next epoch costs one epoch's draws
        return iter(order.tolist())


class DigitsDataModule(LightningDataModule):
    """Train/val/test splits of ``sklearn.datasets.load_digits``, fixed by ``seed``.

    Args:
        batch_size: samples per batch.
        image_size: 8 keeps the original 8x8 images; a larger size (32 for LeNet) upsamples
            them bilinearly once, in ``setup``.
        flatten: give ``(N, image_size**2)`` vectors instead of ``(N, 1, H, W)`` images.
        val_fraction: share of the samples in the validation split.
        test_fraction: share of the samples in the test split.
        seed: seed of the split and of the training-set shuffling (:class:`EpochShuffle`: a
            resumed ``fit`` sees the same order in every epoch as an uninterrupted one).
        num_workers: ``DataLoader`` workers.

    Attributes:
        num_classes: 10, the digits 0 to 9.
        split_indices: after ``setup``, the indices into ``load_digits()`` of the ``"train"``,
            ``"val"`` and ``"test"`` splits.

    Example:
        >>> dm = DigitsDataModule(image_size=8, flatten=True)
        >>> dm.setup()
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), len(dm.train_set) + len(dm.val_set) + len(dm.test_set)
        ((64, 64), 1797)
    """

    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        image_size: int = 32,
        flatten: bool = False,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Expected `batch_size` to be an int >= 1, got {batch_size!r}")
        if not isinstance(flatten, bool):
            raise ValueError(f"Expected `flatten` to be a bool, got {flatten!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"Expected `image_size` to be an int >= 8 (8: the original images), got {image_size!r}")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"Expected `{name}` in (0, 1), got {value!r}")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"Expected `val_fraction + test_fraction` < 1, got {val_fraction + test_fraction}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"Expected `seed` to be an int, got {seed!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"Expected `num_workers` to be an int >= 0, got {num_workers!r}")
        self.save_hyperparameters()
        self.batch_size, self.image_size, self.flatten = batch_size, image_size, flatten
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.seed, self.num_workers = seed, num_workers
        self.split_indices: dict[str, torch.Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        """Load, resize, split and normalise the digits once; later calls do nothing.

        In a fit of the demo's classifier, it is asked first whether it takes these images (before any
        step, a tuner's included).
        """
        from lightning_prune.demo.module import ImageClassifier  # the module imports nothing of this one

        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        if isinstance(module, ImageClassifier):
            module.check_data(self.image_size, self.flatten)
        if self.split_indices:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.int64)
        if self.image_size != 8:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        n_val, n_test = max(1, round(self.val_fraction * len(x))), max(1, round(self.test_fraction * len(x)))
        parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
        mean, std = x[parts["train"]].mean(), x[parts["train"]].std()
        x = (x - mean) / std
        if self.flatten:
            x = x.flatten(1)
        self.split_indices = parts
        self.train_set = TensorDataset(x[parts["train"]], y[parts["train"]])
        self.val_set = TensorDataset(x[parts["val"]], y[parts["val"]])
        self.test_set = TensorDataset(x[parts["test"]], y[parts["test"]])

    def _loader(self, data: TensorDataset, shuffle: bool = False) -> DataLoader:
        sampler = EpochShuffle(data, self.seed) if shuffle else None
        # its own generator for the workers' seeds, as before: none drawn from the global RNG
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            data, batch_size=self.batch_size, sampler=sampler, generator=generator, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
