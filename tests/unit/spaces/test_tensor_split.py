"""In-memory splits: training batches shifted at random (the digits' augmentation), evaluation
batches untouched."""

import torch

from spaces.data import TensorSplit, shifted


def _dots(n: int, size: int = 16) -> torch.Tensor:
    """``n`` images, black but for one white pixel in the middle."""
    x = torch.zeros(n, 3, size, size)
    x[:, :, size // 2, size // 2] = 1.0
    return x


def test_shifted_moves_every_image_by_at_most_shift_pixels_each_way():
    x = _dots(200)
    out = shifted(x, 3, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    moves = set()
    for img in out:
        ys, xs = torch.nonzero(img[0], as_tuple=True)
        assert len(ys) == 1  # the dot moved, nothing was smeared or lost
        dy, dx = int(ys[0]) - 8, int(xs[0]) - 8
        assert -3 <= dy <= 3 and -3 <= dx <= 3
        moves.add((dy, dx))
    assert len(moves) > 30  # of the 49 possible moves, most occur in 200 draws


def test_training_batches_are_shifted_seeded_and_evaluation_batches_are_not():
    x, y = _dots(64), torch.arange(64) % 10
    split = TensorSplit(x, y, shift=2)
    plain = torch.cat([b for b, _ in split.batches(16)])
    assert torch.equal(plain, x)
    a = list(split.batches(16, shuffle_seed=5, augment=True))
    b = list(split.batches(16, shuffle_seed=5, augment=True))
    c = list(split.batches(16, shuffle_seed=6, augment=True))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(torch.cat([p[0] for p in a]), torch.cat([p[0] for p in c]))
    order = torch.randperm(64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.cat([p[1] for p in a]), y[order])  # labels follow their images
    assert not torch.equal(torch.cat([p[0] for p in a]), x[order])
    unshifted = TensorSplit(x, y).batches(16, shuffle_seed=5, augment=True)
    assert torch.equal(torch.cat([p[0] for p in unshifted]), x[order])
    assert split.subset(8).shift == 2
