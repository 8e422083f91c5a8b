"""The phantom probes read sex, nodules and layout back from real chest2d pixels, reject broken
images, and the CNN probe separates what differs and not what does not."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthgen.data.phantoms import chest2d
from synthgen.metrics import phantom_probes as pp

SIZE, N = 32, 800


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Real:
    """Real phantoms as the dataset would serve them, with the truth kept beside them."""

    images: torch.Tensor  # (N, 1, H, W) in [-1, 1], quantised like a stored PNG
    nodule: torch.Tensor
    effusion: torch.Tensor
    male: torch.Tensor
    anatomy: torch.Tensor  # (N, 1, H, W) labels: 1, 2 lungs, 3 heart
    nodule_mask: torch.Tensor


@pytest.fixture(scope="module")
def real() -> Real:
    opts = chest2d.ChestOptions(size=SIZE, min_nodule_px=1.5)
    cases = [chest2d.sample(np.random.default_rng([11, i]), opts) for i in range(N)]
    stored = np.stack([np.round(c.image * 255.0) / 255.0 for c in cases])

    def column(name: str) -> torch.Tensor:
        return torch.tensor([c.row[name] for c in cases])

    def masks(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([c.masks[name] for c in cases]).astype(np.int64))[:, None]

    return Real(
        images=torch.from_numpy(stored * 2.0 - 1.0).float()[:, None],
        nodule=column("nodule"),
        effusion=column("effusion"),
        male=torch.tensor([c.row["sex"] == "M" for c in cases]).long(),
        anatomy=masks("anatomy"),
        nodule_mask=masks("nodule_mask"),
    )


def test_body_width_separates_sex(real: Real) -> None:
    width = pp.body_width(real.images)
    assert width.shape == (N,) and ((width > 0.5) & (width < 1.0)).all()
    assert pp.auroc(width, real.male) >= 0.98
    assert width[real.male == 0].max() < width[real.male == 1].min()  # measured: 0.75 < 0.81


def test_nodule_rule_on_real(real: Real) -> None:
    count, score = pp.nodule_count(real.images), pp.nodule_score(real.images)
    negatives, positives = count[real.nodule == 0], count[real.nodule == 1]
    assert (negatives == 0).float().mean() >= 0.97  # measured 1.00
    assert (positives >= 1).float().mean() >= 0.93  # measured 0.98
    assert (positives >= 2).float().mean() <= 0.02  # measured 0.00
    effusion_only = count[(real.nodule == 0) & (real.effusion == 1)]
    assert len(effusion_only) > 20 and (effusion_only == 0).all()
    assert torch.equal(score >= pp.DARK_LEVEL, count >= 1)
    assert pp.auroc(score, real.nodule) >= 0.95  # measured 0.99


def test_nodule_rule_counts_a_second_nodule(real: Real) -> None:
    """Mirroring each nodule into the other lung (lungs are mirror images above the heart)."""
    pos = real.nodule == 1
    images, mask = real.images[pos].clone(), real.nodule_mask[pos].bool()
    mirrored = mask.flip(-1)
    images[mirrored] = images.flip(-1)[mirrored]
    twice = pp.nodule_count(images)
    assert (twice == 2).float().mean() >= 0.9
    assert (twice <= 2).all()


def test_nodule_rule_shares_read_each_label_against_its_own_rule(real: Real) -> None:
    """Real phantoms agree with their labels; a mirrored second nodule or a dropped label
    moves exactly the share it should."""
    shares = pp.nodule_rule_shares(real.images, real.nodule)
    assert shares["none_when_0"] >= 0.97 and shares["exactly_one_when_1"] >= 0.93
    pos = real.nodule == 1
    images, mask = real.images.clone(), real.nodule_mask.bool() & pos[:, None, None, None]
    mirrored = mask.flip(-1)
    images[mirrored] = images.flip(-1)[mirrored]
    doubled = pp.nodule_rule_shares(images, real.nodule)
    assert doubled["exactly_one_when_1"] <= 0.1
    assert doubled["none_when_0"] == shares["none_when_0"]
    unlabelled = torch.where(pos, torch.full_like(real.nodule, -1), real.nodule)
    only_negatives = pp.nodule_rule_shares(real.images, unlabelled)
    assert math.isnan(only_negatives["exactly_one_when_1"])
    assert only_negatives["none_when_0"] == shares["none_when_0"]


def _corrupt(real: Real, kind: str) -> torch.Tensor:
    """Images that break the phantom layout in one named way."""
    x = real.images[:100]
    g = torch.Generator().manual_seed(5)
    if kind == "uniform noise":
        return torch.rand(x.shape, generator=g) * 2 - 1
    if kind == "blank":
        return -torch.ones_like(x)
    if kind == "white":
        return torch.ones_like(x)
    if kind == "two bodies":
        return torch.cat([x[..., ::2], x[..., ::2]], dim=-1)
    if kind == "shuffled pixels":
        flat = x.flatten(1)
        return torch.stack([r[torch.randperm(r.numel(), generator=g)] for r in flat]).view_as(x)
    assert kind == "lungs filled"
    filled = x.clone()
    lungs = (real.anatomy[:100] == 1) | (real.anatomy[:100] == 2)
    for img, lung, anatomy in zip(filled, lungs, real.anatomy[:100], strict=True):
        tissue = img[(img > -0.6) & ~lung & (anatomy != 3)].median()
        img[lung] = tissue + 0.02 * torch.randn(int(lung.sum()), generator=g)
    return filled


def test_phantom_like_accepts_real(real: Real) -> None:
    assert pp.phantom_like(real.images).float().mean() >= 0.98  # measured 1.00
    blurred = F.avg_pool2d(real.images[:100], 3, 1, 1, count_include_pad=False)
    assert pp.phantom_like(blurred).float().mean() >= 0.9  # layout survives a blur


@pytest.mark.parametrize(
    "kind",
    ["uniform noise", "blank", "white", "two bodies", "shuffled pixels", "lungs filled"],
)
def test_phantom_like_rejects_broken_images(real: Real, kind: str) -> None:
    assert pp.phantom_like(_corrupt(real, kind)).float().mean() <= 0.02  # measured 0.00


def test_cnn_probe_reads_sex_and_nodule(real: Real) -> None:
    fit, held = slice(0, 600), slice(600, N)
    for target, floor in ((real.male, 0.95), (real.nodule, 0.85)):
        probe = pp.train_probe(real.images[fit], target[fit], epochs=6, seed=0)
        assert pp.auroc(pp.probe_scores(probe, real.images[held]), target[held]) >= floor


def test_train_probe_is_seeded_and_leaves_global_rng(real: Real) -> None:
    x, y = real.images[:128], real.male[:128]
    state = torch.get_rng_state()
    scores = [pp.probe_scores(pp.train_probe(x, y, epochs=1, seed=3), x) for _ in range(2)]
    assert torch.equal(scores[0], scores[1])
    assert ((scores[0] >= 0) & (scores[0] <= 1)).all()
    assert torch.equal(state, torch.get_rng_state())


def test_real_vs_synthetic(real: Real) -> None:
    a, b = real.images[: N // 2], real.images[N // 2 :]
    assert abs(pp.real_vs_synthetic_auroc(a, b, seed=0, epochs=4) - 0.5) <= 0.1
    blurred = F.avg_pool2d(b, 3, 1, 1, count_include_pad=False)
    assert pp.real_vs_synthetic_auroc(a, blurred, seed=0, epochs=4) >= 0.95
    noise = torch.randn(b.shape, generator=torch.Generator().manual_seed(1))
    noisy = (b + 0.1 * noise).clamp(-1, 1)
    assert pp.real_vs_synthetic_auroc(a, noisy, seed=0, epochs=4) >= 0.95


def test_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        pp.body_width(torch.zeros(2, 32, 32))
