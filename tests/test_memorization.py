"""The memorisation search finds planted copies of training images (exact, noised, shifted,
flipped) with their source, shift and flip, flags none of the fresh phantoms drawn beside them
at the threshold calibrated on held-out phantoms, in 2D and 3D, and rejects bad input."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthgen.data.phantoms import brain3d, chest2d
from synthgen.errors import InputError
from synthgen.metrics import memorization as mem

NOISE_SD = 0.05  # added to noised copies in [-1, 1] units, without clipping

pytestmark = pytest.mark.usefixtures("one_thread")


def chest(seed: int, n: int) -> torch.Tensor:
    """n chest2d phantoms at 64², model range."""
    rng, opts = np.random.default_rng(seed), chest2d.ChestOptions(size=64)
    images = np.stack([chest2d.sample(rng, opts).image for _ in range(n)])
    return torch.from_numpy(images)[:, None] * 2 - 1


def brain(seed: int, n: int) -> torch.Tensor:
    """n brain3d phantoms at 32³, model range."""
    rng, opts = np.random.default_rng(seed), brain3d.BrainOptions(size=32)
    volumes = np.stack([brain3d.sample(rng, opts).image for _ in range(n)])
    return torch.from_numpy(volumes)[:, None] * 2 - 1


def padded_shift(image: torch.Tensor, shift: tuple[int, ...]) -> torch.Tensor:
    """Shift by whole pixels, filling the uncovered border with background (-1)."""
    out = torch.full_like(image, -1.0)
    target, source = [Ellipsis], [Ellipsis]
    for d, size in zip(shift, image.shape[-len(shift) :], strict=True):
        target.append(slice(max(d, 0), size + min(d, 0)))
        source.append(slice(max(-d, 0), size + min(-d, 0)))
    out[tuple(target)] = image[tuple(source)]
    return out


@dataclass(frozen=True)
class Planted:
    """Clean synthetic images followed by copies of training images, with what was done."""

    synthetic: torch.Tensor
    n_clean: int
    source: list[int]  # per copy: the training index
    flip: list[bool]  # per copy: mirrored along the last axis after shifting
    shift: list[tuple[int, ...]]


def plant(train: torch.Tensor, clean: torch.Tensor, seed: int) -> Planted:
    """Append copies of training images to `clean`, two of each: exact, noised, shifted with
    wrap-around, shifted with a background-filled border, flipped, and all at once (shifted,
    then flipped, then noised)."""
    g = torch.Generator().manual_seed(seed)
    dims = train.ndim - 2
    axes = tuple(range(2, 2 + dims))
    picks = torch.randperm(len(train), generator=g)[:12].tolist()
    copies, source, flips, shifts = [], [], [], []
    for n, i in enumerate(picks):
        x, flip = train[i : i + 1], n % 6 in (4, 5)
        magnitude = torch.randint(1, 5, (dims,), generator=g)
        sign = torch.randint(0, 2, (dims,), generator=g) * 2 - 1
        shift = tuple(int(v) for v in magnitude * sign) if n % 6 in (2, 3, 5) else (0,) * dims
        if n % 6 in (2, 5):
            x = torch.roll(x, shift, axes)
        if n % 6 == 3:
            x = padded_shift(x, shift)
        if flip:
            x = x.flip(-1)
        if n % 6 in (1, 5):
            x = x + NOISE_SD * torch.randn(x.shape, generator=g)
        copies.append(x)
        source.append(i)
        flips.append(flip)
        shifts.append(shift)
    return Planted(torch.cat([clean, *copies]), len(clean), source, flips, shifts)


@pytest.fixture(scope="module")
def chest_case() -> tuple[dict, mem.Matches, Planted]:
    train, holdout, clean = chest(1, 400), chest(2, 200), chest(3, 200)
    planted = plant(train, clean, seed=4)
    report = mem.memorization(train, holdout, planted.synthetic)
    return report, mem.nearest_train(train, planted.synthetic), planted


@pytest.fixture(scope="module")
def brain_case() -> tuple[dict, mem.Matches, Planted]:
    train, holdout, clean = brain(1, 60), brain(2, 30), brain(3, 30)
    planted = plant(train, clean, seed=5)
    report = mem.memorization(train, holdout, planted.synthetic)
    return report, mem.nearest_train(train, planted.synthetic), planted


def test_noise_is_no_copy_whatever_its_noise_ratio() -> None:
    """An untrained model's output: noise whose neighbours anti-correlate. Its noise ratio falls
    below 1 (the wavelet estimate exceeds its spread), but no training image explains it."""
    train, holdout = chest(1, 60), chest(2, 30)
    g = torch.Generator().manual_seed(7)
    white = torch.randn(8, 1, 64, 64, generator=g) * 0.3
    rough = white - F.avg_pool2d(white, 3, stride=1, padding=1, count_include_pad=False)
    copy = train[:1] + NOISE_SD * torch.randn(1, 1, 64, 64, generator=g)
    queries = torch.cat([rough, copy])
    matches = mem.nearest_train(train, queries)
    assert (matches.noise_ratio[:8] < 0.9).all() and (np.abs(matches.correlation[:8]) < 0.3).all()
    report = mem.memorization(train, holdout, queries)
    assert report["flagged"] == [8]  # the noised copy alone
    assert [row["flagged"] for row in report["closest"]] == [
        row["synthetic"] == 8 for row in report["closest"]
    ]


@pytest.mark.parametrize("case", ["chest_case", "brain_case"])
def test_every_planted_copy_is_flagged_with_its_source(
    case: str, request: pytest.FixtureRequest
) -> None:
    report, matches, planted = request.getfixturevalue(case)
    copies = np.arange(planted.n_clean, len(planted.synthetic))
    assert set(copies) <= set(report["flagged"])
    assert matches.index[copies].tolist() == planted.source
    assert matches.flip[copies].tolist() == planted.flip
    assert [tuple(s) for s in matches.shift[copies].tolist()] == planted.shift
    exact = matches.noise_ratio[copies][[n % 6 in (0, 2, 3, 4) for n in range(len(copies))]]
    np.testing.assert_allclose(exact, 0.0, atol=0.01)


@pytest.mark.parametrize("case", ["chest_case", "brain_case"])
def test_no_fresh_phantom_is_flagged(case: str, request: pytest.FixtureRequest) -> None:
    report, matches, planted = request.getfixturevalue(case)
    assert all(i >= planted.n_clean for i in report["flagged"])
    fresh = matches.noise_ratio[: planted.n_clean]
    assert fresh.min() > report["threshold"]
    # here fresh draws stay above the floor of independent noise and every copy below it
    assert report["holdout"]["min"] > 1.0
    assert matches.noise_ratio[planted.n_clean :].max() < 1.0


def test_report_is_json_and_lists_the_closest_pairs_first(chest_case) -> None:
    report, matches, planted = chest_case
    assert json.loads(json.dumps(report)) == report
    assert (report["n_train"], report["n_holdout"], report["n_synthetic"]) == (400, 200, 212)
    assert report["fraction_flagged"] == pytest.approx(len(report["flagged"]) / 212)
    assert report["train_copied"] == len(set(planted.source)) == 12  # one per copied source
    assert report["train_fraction_copied"] == pytest.approx(12 / 400)
    calibrated = min(mem.NOISE_FLOOR, mem.MARGIN * report["holdout"]["min"])
    assert report["threshold"] == pytest.approx(calibrated)
    assert report["features"] is None
    closest = report["closest"]
    assert len(closest) == 8
    ratios = [row["noise_ratio"] for row in closest]
    assert ratios == sorted(ratios)
    for row in closest:
        assert row["synthetic"] >= planted.n_clean and row["flagged"]
        assert row["train"] == matches.index[row["synthetic"]]


def test_noise_ratio_is_one_for_fresh_acquisitions_and_below_for_a_noised_copy() -> None:
    g = torch.Generator().manual_seed(6)
    clean = chest2d.sample(np.random.default_rng(7), chest2d.ChestOptions(size=64)).clean
    anatomy = torch.from_numpy(clean)[None, None] * 2 - 1

    def acquire(image: torch.Tensor) -> torch.Tensor:
        return image + 0.04 * torch.randn(image.shape, generator=g)

    source = acquire(anatomy)
    queries = torch.cat([acquire(anatomy), acquire(source)])
    matches = mem.nearest_train(source, queries, max_shift=2)
    fresh, copy = matches.noise_ratio
    assert fresh == pytest.approx(1.0, abs=0.2)
    assert copy == pytest.approx(1 / 3, abs=0.1)  # 0.04² / (0.04² + 2 * 0.04²)


def test_noise_sd_recovers_white_noise_under_smooth_structure() -> None:
    g = torch.Generator().manual_seed(8)
    ramp = torch.linspace(-0.8, 0.8, 64).expand(64, 64)
    sd = torch.tensor([0.01, 0.05, 0.2])
    images = ramp + sd[:, None, None, None] * torch.randn(3, 1, 64, 64, generator=g)
    np.testing.assert_allclose(mem.noise_sd(images), sd, rtol=0.1)


def test_feature_space_finds_an_exact_copy() -> None:
    g = torch.Generator().manual_seed(9)
    train, holdout = chest(1, 40), chest(2, 20)
    synthetic = torch.cat([chest(3, 18), train[7:8], train[7:8]])
    features = [torch.randn(n, 32, generator=g) for n in (40, 20, 20)]
    features[2][18] = features[0][7] * 2.0
    features[2][19] = features[0][7] * 3.0
    report = mem.memorization(
        train,
        holdout,
        synthetic,
        train_features=features[0],
        holdout_features=features[1],
        synthetic_features=features[2],
    )
    index, cosine = mem.nearest_by_features(features[0], features[2])
    assert (index[19], cosine[19]) == (7, pytest.approx(1.0, abs=1e-6))
    assert {18, 19} <= set(report["features"]["flagged"]) and 19 in report["flagged"]
    for verdict in (report, report["features"]):  # two copies of one image: one image copied
        assert verdict["train_copied"] == 1 and verdict["train_fraction_copied"] == 1 / 40
    assert report["features"]["statistic"] == "cosine_distance"


def _bad(**change: object) -> dict:
    """Valid arguments for `memorization` with some replaced."""
    images = torch.zeros(3, 1, 32, 32)
    arguments: dict = {"train": images, "holdout": images, "synthetic": images}
    return {**arguments, **change}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"synthetic": torch.zeros(3, 1, 24, 24)}, "differ in shape"),
        ({"holdout": torch.zeros(0, 1, 32, 32)}, "holdout: no images"),
        ({"train": torch.zeros(3, 2, 32, 32)}, "expected (N, 1, H, W)"),
        ({"train": torch.zeros(3, 32, 32)}, "expected (N, 1, H, W)"),
        ({"synthetic": torch.full((3, 1, 32, 32), float("nan"))}, "NaN"),
        ({"train": np.zeros((3, 1, 32, 32))}, "expected a tensor"),
        ({"max_shift": 13}, "leaves under"),
        ({"max_shift": -1}, "non-negative integer"),
        ({"top": -1}, "non-negative integer"),
        ({"train_features": torch.zeros(3, 4)}, "missing holdout_features"),
        (
            {
                "train_features": torch.zeros(3, 4),
                "holdout_features": torch.zeros(2, 4),
                "synthetic_features": torch.zeros(3, 4),
            },
            "holdout_features: expected (3, D)",
        ),
        (
            {
                "train_features": torch.zeros(3, 4),
                "holdout_features": torch.zeros(3, 5),
                "synthetic_features": torch.zeros(3, 4),
            },
            "differ in width",
        ),
    ],
)
def test_bad_input_is_an_input_error(change: dict, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        mem.memorization(**_bad(**change))


def test_feature_search_rejects_mismatched_widths() -> None:
    with pytest.raises(InputError, match="feature widths differ"):
        mem.nearest_by_features(torch.zeros(3, 4), torch.zeros(2, 5))
