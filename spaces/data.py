"""What training, recalibration and evaluation read images from: a split, as batches.

A ``Split`` yields ``(images, labels)`` batches in the evaluation transform, or shuffled and
augmented for training; ``images(n)`` is its first ``n`` images as one tensor (for the few steps
that need a handful: an example input, quantization calibration). ``TensorSplit`` holds its images
in memory (the embedded digits); ``search.task.data.FolderSplit`` streams an ImageFolder tree from
disk through a DataLoader.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


class Split(ABC):
    """Labelled images, read in batches."""

    @property
    @abstractmethod
    def labels(self) -> np.ndarray:
        """The class index of every image, in order (int64)."""

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def batches(
        self, batch_size: int, *, shuffle_seed: int | None = None, augment: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, labels)`` batches: in order, or shuffled by ``shuffle_seed``; the training
        transform where ``augment``; the first ``limit`` images (of the order) only where given.
        A batch may be shorter than ``batch_size`` where images could not be read (skipped)."""

    def images(self, n: int) -> torch.Tensor:
        """The first ``n`` images (evaluation transform) as one ``n x 3 x S x S`` tensor."""
        return torch.cat([x for x, _ in self.batches(min(max(n, 1), 64), limit=n)])

    @abstractmethod
    def subset(self, n: int) -> Split:
        """The first ``n`` images as a split of their own (the same transforms)."""

    @property
    @abstractmethod
    def size(self) -> int:
        """The side of its (square) images in pixels."""

    @abstractmethod
    def at_size(self, size: int) -> Split:
        """The same images and labels at ``size`` x ``size`` (itself where that is its size)."""


@dataclass(frozen=True, eq=False)
class TensorSplit(Split):
    """Images held in memory, already in the evaluation transform. Training batches are translated
    at random by up to ``shift`` pixels each way (``shifted``; 0: no augmentation)."""

    x: torch.Tensor
    y: torch.Tensor
    shift: int = 0

    @property
    def labels(self) -> np.ndarray:
        return self.y.numpy()

    def batches(
        self, batch_size: int, *, shuffle_seed: int | None = None, augment: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = order_of(len(self.y), shuffle_seed)[:limit]
        moves = torch.Generator().manual_seed(0 if shuffle_seed is None else shuffle_seed)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = self.x[idx]
            yield (shifted(x, self.shift, moves) if augment and self.shift else x), self.y[idx]

    def images(self, n: int) -> torch.Tensor:
        return self.x[:n]

    def subset(self, n: int) -> Split:
        return TensorSplit(self.x[:n], self.y[:n], self.shift)

    @property
    def size(self) -> int:
        return int(self.x.shape[-1])

    def at_size(self, size: int) -> Split:
        """Resized in memory (bilinear, antialiased when shrinking; the normalisation is per channel
        and affine, so it commutes); the shift scales with the side."""
        if size == self.size:
            return self
        x = torch.nn.functional.interpolate(
            self.x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < self.size
        )
        return TensorSplit(x.contiguous(), self.y, round(self.shift * size / self.size))


def shifted(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of the ``N x C x H x W`` batch translated by a random whole number of pixels in
    ``[-shift, shift]`` per axis; the edge pixels fill the space left (replicate padding)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift), mode="replicate")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def order_of(n: int, shuffle_seed: int | None) -> torch.Tensor:
    """``0..n-1`` in order, or shuffled by a generator seeded with ``shuffle_seed``."""
    if shuffle_seed is None:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
