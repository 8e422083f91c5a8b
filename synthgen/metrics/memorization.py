"""Memorisation: find synthetic images that copy a training image.

Each synthetic image is matched to its nearest training image in pixel space, allowing for the
copies people worry about: exact, noised, shifted by up to `max_shift` pixels (wrapped or
padded) and flipped along the last axis (left-right, in 2D and 3D). Every window of the query
(and of its flip) that starts inside the frame is compared with the central crop of a training
image, so a shifted copy lines up exactly with its source. Brute force over every pair and shift
is too slow, so a cheap shortlist (cosine on block-averaged departures from the training mean,
over the flip and every shift) picks `SHORTLIST` candidates for the exact search.

The pixel statistic is the *noise ratio*: the variance left after the best affine intensity fit
of the training image onto the query, divided by the variance that independent acquisition
noise alone would leave (the two images' noise variances, each estimated from the image). An
exact copy scores 0 and a noised copy below 1, because it keeps its source's noise and only adds
its own; two fresh acquisitions score about 1 or more, because each brings independent noise.
This is what tells copies from fresh draws where anatomy nearly repeats: among 64² chest
phantoms (2,000 training images) fresh draws reach a correlation of 0.997 with some training
image while copies with added noise SD 0.05 fall to 0.987, so no correlation threshold separates
them; their noise ratios do (fresh >= 1.09, such copies <= 0.85). Clipping hides part of the
noise: the same copies clipped to [-1, 1] reached 1.15, and 5 % of them went unflagged.

The threshold is calibrated on real-vs-real pairs: held-out real images (never trained on) go
through the same search, and a synthetic image is flagged when it comes closer to a training
image than MARGIN times the closest held-out image came, and for the noise ratio also no further
than NOISE_FLOOR (see `calibrate`), and the training image explains at least half its
variance (COPY_CORRELATION: noise copies nothing, whatever its ratio). The pixel flag thus finds
copies that keep their source's own noise, which is what a generator that memorised emits pixel
for pixel; a smoothed near-copy has lost that noise and is the feature flag's job (optional
features from any extractor, the same rule on cosine distance), though `closest` in the report
still lists it.

Images are (N, 1, H, W) or (N, 1, D, H, W) float tensors in [-1, 1]; features are (N, D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pywt
import torch
import torch.nn.functional as F

from synthgen.data.progress import Bar
from synthgen.errors import InputError

SHORTLIST = 16  # candidates per query; on 2,000 64² phantoms copies rank their source first
COARSE_VALUES = 256  # the shortlist compares crops block-averaged down to at most this many values
MIN_CROP = 8  # the compared central crop keeps at least this many pixels a side
CHUNK_FLOATS = 2**24  # floats a search step materialises at once (64 MiB)
QUANTISATION_SD = 2 / 255 / math.sqrt(12)  # noise floor: rounding to 8 bits, in [-1, 1] units
MAD_TO_SD = 0.6745  # median |x| of a standard normal
MARGIN = 0.85  # flag what comes closer than this fraction of the closest held-out distance
QUANTILES = {"min": 0.0, "p1": 0.01, "p5": 0.05, "p50": 0.5, "p95": 0.95, "p99": 0.99, "max": 1.0}
NOISE_FLOOR = 1.0  # noise ratio of two independent acquisitions of the same anatomy
# A copy is mostly its source: the training image explains at least half its variance. Noise
# matches nothing, yet noise whose neighbours anti-correlate (an untrained model's output) has a
# wavelet noise estimate above its spread, so its noise ratio alone falls below 1.
COPY_CORRELATION = math.sqrt(0.5)
RULE = (
    "flagged when its distance to the nearest training image is at most "
    f"{MARGIN} x the smallest such distance over held-out real images "
    f"(for the noise ratio also at most {NOISE_FLOOR}, with a correlation of at least "
    f"{COPY_CORRELATION:.3f})"
)


@dataclass(frozen=True)
class Matches:
    """Each query's nearest training image in pixel space.

    `noise_ratio` is the distance (0 = exact copy, < 1 = a copy with added noise, >= 1 = two
    independent acquisitions); `flip` says whether the query was mirrored along the last axis
    and `shift` (pixels per spatial axis) moves the training image onto the (mirrored) query.
    """

    index: np.ndarray  # (N,) int64 training index
    noise_ratio: np.ndarray  # (N,) float64
    correlation: np.ndarray  # (N,) float64 Pearson correlation of the matched pixels
    flip: np.ndarray  # (N,) bool
    shift: np.ndarray  # (N, dims) int64


def _check_images(name: str, images: object) -> torch.Tensor:
    """One image set as contiguous float32 on the CPU; bad shapes or values are InputErrors."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{name}: expected a tensor, got {type(images).__name__}")
    if images.ndim not in (4, 5) or images.shape[1] != 1:
        shape = tuple(images.shape)
        raise InputError(f"{name}: expected (N, 1, H, W) or (N, 1, D, H, W), got {shape}")
    if images.shape[0] == 0:
        raise InputError(f"{name}: no images")
    if not torch.isfinite(images).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    return images.detach().to("cpu", torch.float32).contiguous()


def _check_sets(max_shift: object, **sets: torch.Tensor) -> None:
    """All sets share one spatial shape that leaves a crop after shifting by `max_shift`."""
    shapes = {name: tuple(x.shape[1:]) for name, x in sets.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise InputError(f"image sets differ in shape: {listed}")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise InputError(f"max_shift must be a non-negative integer, got {max_shift!r}")
    spatial = next(iter(shapes.values()))[1:]
    if min(spatial) - 2 * max_shift < MIN_CROP:
        size = "x".join(map(str, spatial))
        raise InputError(f"max_shift {max_shift} leaves under {MIN_CROP} px of {size} images")


def _check_features(name: str, features: object, count: int | None = None) -> torch.Tensor:
    """One feature set (count, D) as float32 (any count >= 1 if None); else an InputError."""
    if not isinstance(features, torch.Tensor):
        raise InputError(f"{name}: expected a tensor, got {type(features).__name__}")
    rows = features.shape[0] if features.ndim == 2 and count is None else count
    if features.ndim != 2 or features.shape[0] != rows or 0 in features.shape:
        raise InputError(f"{name}: expected ({rows or 'N'}, D), got {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    return features.detach().to("cpu", torch.float32)


def noise_sd(images: torch.Tensor) -> torch.Tensor:
    """Each image's noise SD (N,): the median absolute finest diagonal wavelet coefficient over
    0.6745 (Donoho & Johnstone), which sparse edges barely move; floored at 8-bit rounding."""
    # scikit-image's estimate_sigma does the same but is not a dependency; PyWavelets is.
    axes = tuple(range(1, images.ndim - 1))
    finest = pywt.dwtn(images[:, 0].double().numpy(), "haar", axes=axes)["d" * len(axes)]
    mad = np.median(np.abs(finest.reshape(len(images), -1)), axis=1)
    return torch.from_numpy(mad / MAD_TO_SD).float().clamp_min(QUANTISATION_SD)


def _normalise(rows: torch.Tensor) -> torch.Tensor:
    """Rows with zero mean and unit norm, so a dot product is a Pearson correlation."""
    centred = rows - rows.mean(dim=-1, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _pool(images: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Box average over the spatial axes, 2D or 3D."""
    pool = F.avg_pool2d if images.ndim == 4 else F.avg_pool3d
    return pool(images, kernel, stride)


def _central(images: torch.Tensor, shift: int) -> torch.Tensor:
    """The part of each image (N, 1, ...) that every shift up to `shift` keeps in the frame."""
    return images[(..., *(slice(shift, size - shift) for size in images.shape[2:]))]


def _block(crop: list[int]) -> int:
    """Smallest block side whose averages over the crop number at most COARSE_VALUES."""
    block = 1
    while math.prod(size // block for size in crop) > COARSE_VALUES:
        block += 1
    return block


def _coarse_windows(queries: torch.Tensor, shift: int, block: int, grid: list[int]) -> torch.Tensor:
    """Block averages (B, 2 * offsets, values) of every crop-sized window of each query and of
    its flip: one pooling at stride 1, then each window's blocks are a strided view."""
    both = torch.cat([queries, queries.flip(-1)], dim=1)
    windows = _pool(both, block, 1)
    for axis, size in enumerate(grid, start=2):
        windows = windows.unfold(axis, (size - 1) * block + 1, 1)
    keep = (slice(0, 2 * shift + 1),) * len(grid) + (slice(None, None, block),) * len(grid)
    return windows[(slice(None), slice(None), *keep)].reshape(len(queries), -1, math.prod(grid))


def _shortlist(train: torch.Tensor, queries: torch.Tensor, shift: int) -> torch.Tensor:
    """(N, k) training indices whose coarse central crop is closest (cosine of departures from
    the training mean) to some coarse window of the query or its flip."""
    central = _central(train, shift)
    crop = list(central.shape[2:])
    block = _block(crop)
    mean = _pool(central.mean(dim=0, keepdim=True), block, block)
    grid = list(mean.shape[2:])
    reference = _normalise((_pool(central, block, block) - mean).flatten(1))
    variants = 2 * (2 * shift + 1) ** len(grid)
    found = []
    for part in queries.split(max(1, CHUNK_FLOATS // (variants * len(train)))):
        windows = _normalise(_coarse_windows(part, shift, block, grid) - mean.flatten())
        cosine = (windows.flatten(0, 1) @ reference.T).view(len(part), variants, -1)
        found.append(cosine.amax(dim=1).topk(min(SHORTLIST, len(train)), dim=1).indices)
    return torch.cat(found)


@dataclass(frozen=True)
class _Reference:
    """The training side of the exact search: the spectrum of each centred, normalised central
    crop (zero-padded to the frame), the crop's spread (norm after centring) and noise SD."""

    spectra: torch.Tensor  # (N, *frequencies) complex, conjugated
    spread: torch.Tensor  # (N,)
    noise: torch.Tensor  # (N,)


def _reference(train: torch.Tensor, shift: int) -> _Reference:
    """Central crops of the training images, which every query window is compared with."""
    crops = _central(train, shift)[:, 0]
    axes = tuple(range(1, crops.ndim))
    centred = crops - crops.mean(dim=axes, keepdim=True)
    spread = centred.flatten(1).norm(dim=1)
    unit = centred / spread.clamp_min(1e-12).view(-1, *(1,) * len(axes))
    padded = F.pad(unit, [0, 2 * shift] * len(axes))
    return _Reference(torch.fft.rfftn(padded, dim=axes).conj(), spread, noise_sd(train))


def _box_sums(images: torch.Tensor, crop: list[int]) -> torch.Tensor:
    """Sum over every crop-sized window inside the frame, from cumulative sums per axis."""
    out = images
    for axis, size in enumerate(crop, start=2):
        start = torch.zeros_like(out.narrow(axis, 0, 1))
        cumulative = torch.cat([start, out.cumsum(axis)], dim=axis)
        count = out.shape[axis] - size + 1
        out = cumulative.narrow(axis, size, count) - cumulative.narrow(axis, 0, count)
    return out


def _correlate(
    both: torch.Tensor, reference: _Reference, candidates: torch.Tensor, shift: int
) -> torch.Tensor:
    """Dot products (B, W, k) of every window of the queries and their flips (B, 2, ...) with
    each candidate's unit crop. Cross-correlation by FFT: the padded crop never wraps round for
    the offsets kept, so the circular result is exact there, at a fraction of the direct cost."""
    dims = both.ndim - 2
    spectra = torch.fft.rfftn(both, dim=tuple(range(2, 2 + dims)))
    cross = spectra[:, :, None] * reference.spectra[candidates][:, None]
    full = torch.fft.irfftn(cross, s=both.shape[2:], dim=tuple(range(3, 3 + dims)))
    valid = full[(..., *(slice(0, 2 * shift + 1),) * dims)].flatten(3)
    return valid.transpose(2, 3).reshape(len(both), -1, candidates.shape[1])


def _exact(
    queries: torch.Tensor,
    noise: torch.Tensor,
    reference: _Reference,
    candidates: torch.Tensor,
    shift: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise ratio of every window against every candidate (B, W, k); returns the smallest per
    query with its correlation, the candidate's position and the window's number."""
    both = torch.cat([queries, queries.flip(-1)], dim=1)
    crop = [size - 2 * shift for size in both.shape[2:]]
    wide = both.double()
    total, total_sq = _box_sums(wide, crop), _box_sums(wide.square(), crop)
    spread_sq = (total_sq - total.square() / math.prod(crop)).clamp_min(0.0)
    spread_sq = spread_sq.reshape(len(queries), -1, 1).float()
    # the crops are centred, so raw windows give the same dot products as centred ones
    dots = _correlate(both, reference, candidates, shift)
    correlation = (dots / spread_sq.sqrt().clamp_min(1e-12)).clamp(-1.0, 1.0)
    left = (1.0 - correlation.square()) * spread_sq / math.prod(crop)
    gain = dots / reference.spread[candidates][:, None].clamp_min(1e-12)
    expected = (
        noise[:, None, None].square() + (gain * reference.noise[candidates][:, None]).square()
    )
    ratio = (left / expected).flatten(1)
    best = ratio.argmin(dim=1)
    k = candidates.shape[1]
    return (
        ratio.gather(1, best[:, None])[:, 0],
        correlation.flatten(1).gather(1, best[:, None])[:, 0],
        best % k,
        best // k,
    )


def _decode(window: np.ndarray, dims: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Window number -> (flipped?, shift per axis that takes the training image onto the query)."""
    per_flip = (2 * shift + 1) ** dims
    offsets = np.stack(np.unravel_index(window % per_flip, (2 * shift + 1,) * dims), axis=1)
    return window >= per_flip, (offsets - shift).astype(np.int64)


def _search(
    train: torch.Tensor,
    reference: _Reference,
    queries: torch.Tensor,
    max_shift: int,
    description: str,
    show: bool,
) -> Matches:
    """Shortlist, then the exact shift/flip search over each query's candidates."""
    candidates = _shortlist(train, queries, max_shift)
    noise = noise_sd(queries)
    dims = train.ndim - 2
    per_query = 6 * SHORTLIST * math.prod(queries.shape[2:])
    step = max(1, CHUNK_FLOATS // per_query)
    parts = []
    bar = Bar(len(queries), description, unit="img", show=show)
    try:
        for start in range(0, len(queries), step):
            rows = slice(start, start + step)
            parts.append(_exact(queries[rows], noise[rows], reference, candidates[rows], max_shift))
            bar.update(min(start + step, len(queries)))
    finally:
        bar.close()
    ratio, correlation, position, window = (
        torch.cat(column) for column in zip(*parts, strict=True)
    )
    flip, shift = _decode(window.numpy(), dims, max_shift)
    return Matches(
        index=candidates.gather(1, position[:, None])[:, 0].numpy().astype(np.int64),
        noise_ratio=ratio.double().numpy(),
        correlation=correlation.double().numpy(),
        flip=flip,
        shift=shift,
    )


def nearest_train(
    train: torch.Tensor, queries: torch.Tensor, *, max_shift: int = 4, show: bool = False
) -> Matches:
    """Each query's nearest training image (smallest noise ratio) over shifts and the flip."""
    train, queries = _check_images("train", train), _check_images("queries", queries)
    _check_sets(max_shift, train=train, queries=queries)
    reference = _reference(train, max_shift)
    return _search(train, reference, queries, max_shift, "memorisation search", show)


def nearest_by_features(
    train_features: torch.Tensor, query_features: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's nearest training feature vector: (index (N,), cosine similarity (N,))."""
    train = F.normalize(_check_features("train_features", train_features), dim=1)
    query = F.normalize(_check_features("query_features", query_features), dim=1)
    if train.shape[1] != query.shape[1]:
        raise InputError(f"feature widths differ: train {train.shape[1]}, query {query.shape[1]}")
    best = [(part @ train.T).max(dim=1) for part in query.split(max(1, CHUNK_FLOATS // len(train)))]
    index = torch.cat([b.indices for b in best]).numpy().astype(np.int64)
    return index, torch.cat([b.values for b in best]).clamp(-1.0, 1.0).double().numpy()


def calibrate(holdout_distances: np.ndarray, ceiling: float = math.inf) -> float:
    """The flag threshold: MARGIN times the smallest held-out distance, at most `ceiling`.

    Held-out real images are fresh draws from the training population, so the closest of them
    shows how near chance alone brings an image to some training image; a synthetic image that
    comes clearly closer than that is a copy. The minimum of a few hundred held-out images
    still overestimates the minimum of a larger synthetic set: on 32³ brain phantoms (300
    training) the minimum over 300 fresh draws came down to 0.74 x that over 100. For the noise
    ratio the ceiling NOISE_FLOOR caps the threshold where no copy can be mistaken for a fresh
    acquisition; the margin then matters only where fresh draws crowd the floor, as 64² chest
    phantoms do (2,000 fresh draws came down to 0.94 x the minimum over 500 held-out ones,
    copies with added noise stayed below 0.69 x it).
    """
    return float(min(ceiling, MARGIN * np.min(holdout_distances)))


def _quantiles(values: np.ndarray) -> dict[str, float]:
    """Summary of a distance distribution for the report."""
    return {name: float(np.quantile(values, q)) for name, q in QUANTILES.items()}


def _verdict(
    holdout: np.ndarray,
    synthetic: np.ndarray,
    nearest: np.ndarray,
    n_train: int,
    statistic: str,
    ceiling: float = math.inf,
    eligible: np.ndarray | None = None,
) -> dict:
    """Threshold, distributions and flags for one space (distances: smaller is closer; `nearest`
    the training index each synthetic image matched); only `eligible` synthetic images (default
    all) can be flagged. `train_fraction_copied` is the share of training images with at least
    one flagged near-copy, the figure medical memorisation studies report per training set."""
    threshold = calibrate(holdout, ceiling)
    close = synthetic <= threshold
    flagged = np.flatnonzero(close if eligible is None else close & eligible)
    copied = len(np.unique(nearest[flagged]))
    return {
        "statistic": statistic,
        "threshold": threshold,
        "holdout": _quantiles(holdout),
        "synthetic": _quantiles(synthetic),
        "fraction_flagged": float(len(flagged) / len(synthetic)),
        "flagged": flagged.tolist(),
        "train_copied": copied,
        "train_fraction_copied": copied / n_train,
    }


def _copies(matches: Matches) -> np.ndarray:
    """Which pixel matches could be copies at all (COPY_CORRELATION)."""
    return np.abs(matches.correlation) >= COPY_CORRELATION


def _closest(matches: Matches, flagged: list[int], top: int) -> list[dict]:
    """The `top` synthetic/train pairs with the smallest noise ratio, closest first, each
    marked with the verdict's flag."""
    marked = set(flagged)
    order = np.argsort(matches.noise_ratio, kind="stable")[:top]
    return [
        {
            "synthetic": int(i),
            "train": int(matches.index[i]),
            "noise_ratio": float(matches.noise_ratio[i]),
            "correlation": float(matches.correlation[i]),
            "flip": bool(matches.flip[i]),
            "shift": matches.shift[i].tolist(),
            "flagged": int(i) in marked,
        }
        for i in order
    ]


def _check_top(top: object) -> None:
    """`top` counts report rows, so it must be a non-negative integer."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise InputError(f"top must be a non-negative integer, got {top!r}")


def _features(counts: tuple[int, int, int], given: tuple[object, object, object]) -> dict | None:
    """The feature-space verdict, when all three feature sets are given (none is fine too)."""
    names = ("train_features", "holdout_features", "synthetic_features")
    if all(features is None for features in given):
        return None
    if any(features is None for features in given):
        missing = ", ".join(n for n, f in zip(names, given, strict=True) if f is None)
        raise InputError(f"features must be given for all three sets; missing {missing}")
    checked = [_check_features(*item) for item in zip(names, given, counts, strict=True)]
    if len({f.shape[1] for f in checked}) > 1:
        widths = ", ".join(f"{n} {f.shape[1]}" for n, f in zip(names, checked, strict=True))
        raise InputError(f"feature sets differ in width: {widths}")
    _, holdout_cosine = nearest_by_features(checked[0], checked[1])
    nearest, synthetic_cosine = nearest_by_features(checked[0], checked[2])
    return _verdict(
        1.0 - holdout_cosine, 1.0 - synthetic_cosine, nearest, counts[0], "cosine_distance"
    )


def memorization(
    train: torch.Tensor,
    holdout: torch.Tensor,
    synthetic: torch.Tensor,
    *,
    train_features: torch.Tensor | None = None,
    holdout_features: torch.Tensor | None = None,
    synthetic_features: torch.Tensor | None = None,
    max_shift: int = 4,
    top: int = 8,
    show: bool = False,
) -> dict:
    """Flag synthetic images that copy a training image; a JSON-serialisable report.

    Top-level `threshold`, `holdout`, `synthetic`, `fraction_flagged` and `flagged` are for the
    pixel noise ratio; `features` holds the same for cosine distance when features are given
    (else None); `closest` lists the `top` closest synthetic/train pairs in pixel space.
    """
    train = _check_images("train", train)
    holdout = _check_images("holdout", holdout)
    synthetic = _check_images("synthetic", synthetic)
    _check_sets(max_shift, train=train, holdout=holdout, synthetic=synthetic)
    _check_top(top)
    features = _features(
        (len(train), len(holdout), len(synthetic)),
        (train_features, holdout_features, synthetic_features),
    )
    reference = _reference(train, max_shift)
    held = _search(train, reference, holdout, max_shift, "memorisation: held-out", show)
    found = _search(train, reference, synthetic, max_shift, "memorisation: synthetic", show)
    pixel = _verdict(
        held.noise_ratio, found.noise_ratio, found.index, len(train), "noise_ratio",
        NOISE_FLOOR, _copies(found),
    )  # fmt: skip
    return {
        "n_train": len(train),
        "n_holdout": len(holdout),
        "n_synthetic": len(synthetic),
        "max_shift": max_shift,
        "rule": RULE,
        **pixel,
        "features": features,
        "closest": _closest(found, pixel["flagged"], top),
    }
