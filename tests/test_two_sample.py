"""The real-vs-synthetic classifier test (issue #20): near 0.5 with a CI covering it when both
sets come from one distribution, near 1 when the synthetic set is noisy; refused when a set
is too small to split."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from synthgen.config import ClassifierConfig, TrainConfig
from synthgen.errors import InputError
from synthgen.metrics.two_sample import two_sample_auroc

FAST = ClassifierConfig(
    widths=(8, 8, 16, 16),
    train=TrainConfig(steps=80, batch_size=32, lr=3e-3, ema_decay=None, checkpoint_every=1000),
)


def blobs(n: int, seed: int) -> torch.Tensor:
    """(n, 1, 16, 16) images in [-1, 1]: smooth random fields."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 1, 4, 4, generator=g), size=(16, 16), mode="bilinear")
    return x.clamp(-1, 1)


def test_one_distribution_reads_chance_and_a_noisy_one_is_told_apart(tmp_path, one_thread):
    real, same = blobs(96, 0), blobs(96, 1)
    chance = two_sample_auroc(real, same, FAST, tmp_path / "a", bootstrap=200)
    auroc = chance["auroc"]
    assert auroc["lo"] <= 0.5 <= auroc["hi"] and abs(auroc["mean"] - 0.5) < 0.2
    assert chance["n_fit"] == 96 and chance["n_test"] == 96
    noisy = same + 0.6 * torch.randn(same.shape, generator=torch.Generator().manual_seed(2))
    told = two_sample_auroc(real, noisy.clamp(-1, 1), FAST, tmp_path / "b", bootstrap=200)
    assert told["auroc"]["mean"] > 0.9 and told["auroc"]["lo"] > 0.75


def test_too_few_images_is_one_error(tmp_path):
    with pytest.raises(InputError, match="needs 8 images of each set, got 4"):
        two_sample_auroc(blobs(20, 0), blobs(4, 1), FAST, tmp_path / "c")
