"""Scheme 2: a periodic spread-spectrum tile that finds its own geometry.

The mark is one 64×64 px tile repeated over the image: 32×32 chips of 2×2 px, each chip
`ALPHA·sync + BETA·key·(±1 coded bit)`, blurred by `BLUR` px and added at `AMP` gray levels
(rms, 8-bit view). The sync part is the same for every release; the rest carries the coded
release id (`code.py`).

Detection undoes what happened to the image: a crop only moves the tile (found by circular
correlation of the folded tile with the sync), a rotation or resize turns and scales the tile's
period, which shows as a lattice of peaks in the autocorrelation of the image's fine residual
(Kutter's self-reference; whitened, so the tile's lines stand out). The detector scores
candidate lattices (angle, scale), folds the residual onto one tile under each, refines the
best correlation peak, and reads the bits by correlation, alignment by alignment while they
clear their bars. Every threshold comes from the number of alignments it tried (a weighted
Bonferroni bound on a standard normal peak), so the false-positive rate holds by construction
and is measured in docs/watermark.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.special import ndtri

from synthgen.watermark import code

CHIPS = 32  # chips per tile side
CHIP_PX = 2  # pixels per chip side: survives a 0.5× resize and JPEG's loss of fine detail
TILE = CHIPS * CHIP_PX
ALPHA = 0.5  # the sync's share of the amplitude; the coded bits get sqrt(1 - ALPHA²)
BETA = float(np.sqrt(1 - ALPHA**2))
AMP = 2.45  # rms of the mark in 8-bit gray levels: 40.3 dB PSNR at worst (clipping only raises it)
BLUR = 0.6  # px: the chips' edges softened, so more of the mark sits where JPEG keeps detail
LOCAL = 5  # px: the residual is the image less its LOCAL×LOCAL mean (7 measured no better)
SPREAD = 3  # px: the residual is divided by its spread over SPREAD×SPREAD px (9: worse at 128²)
KEY_SEED = 0xC5A3  # the synthgen tag: the sync, the chip key and the bit layout derive from it
WINDOW = 512  # detection reads at most this centred square: a crop leaves the mark whole
SMALL = 160  # at or under this side, every scale and every angle are tried too (the lattice
# has two periods at most)
PERIODS = 2.5  # every scale at which the image holds at most this many tile periods a side is
# tried too: its autocorrelation has too few lattice points to rank it (a 128 px image
# enlarged 2x)
WHITEN = 9  # bins: the residual's power spectrum is divided by its local mean before the
# autocorrelation, so the tile's spectral lines, not the anatomy's or JPEG's broad correlation,
# make its peaks
ANGLES = np.deg2rad(np.arange(-6.0, 6.01, 0.5))
SCALES = np.exp(np.linspace(np.log(0.45), np.log(2.3), 120))
LINE_STEP = 0.006  # log-scale step of the exhaustive scale line for small images
TOP = 4  # lattice candidates folded besides the identity
IDENTITY_SHARE = 0.5  # of the false-alarm budget, for the untouched geometry (what JPEG, noise,
# gamma and crops leave); every other alignment tried shares the rest (weighted Bonferroni)
EARLY = 1e-3  # the identity is read before any search only past the bar this share sets
READS = 4  # alignments past their bars whose bits are read, best margin first
REFINE = ((np.deg2rad(0.25), 0.01), (np.deg2rad(0.1), 0.004))  # (angle, scale) steps, 3×3 each


def _key() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(KEY_SEED)
    sync = rng.choice([-1.0, 1.0], size=(CHIPS, CHIPS))
    key = rng.choice([-1.0, 1.0], size=(CHIPS, CHIPS))
    layout = rng.permutation(np.arange(CHIPS * CHIPS) % code.CODED_BITS).reshape(CHIPS, CHIPS)
    return sync, key, layout


SYNC, KEY, LAYOUT = _key()


def _pixels(chips: np.ndarray) -> np.ndarray:
    """Chips as the pixels of one tile, blurred across the tile's periodic edges."""
    return ndimage.gaussian_filter(np.kron(chips, np.ones((CHIP_PX, CHIP_PX))), BLUR, mode="wrap")


def _highpass(t: np.ndarray) -> np.ndarray:
    """What `residual` keeps of a tile (its linear part: less the local mean), so a fold is
    correlated with what it can hold (a matched filter)."""
    return t - ndimage.uniform_filter(t, LOCAL, mode="wrap")


SYNC_TILE = _highpass(_pixels(SYNC))
# Per coded bit, its chips as a readout pattern: (CODED_BITS, TILE²).
_BIT_PATTERNS = np.stack(
    [_highpass(_pixels(KEY * (b == LAYOUT))).ravel() for b in range(code.CODED_BITS)]
)


@lru_cache(maxsize=16)
def tile(release_id: int) -> np.ndarray:
    """The release's (TILE, TILE) tile, rms 1 (read-only: cached)."""
    out = _pixels(_chips(release_id))
    out /= np.sqrt(np.mean(out**2))
    out.setflags(write=False)
    return out


def _chips(release_id: int) -> np.ndarray:
    coded = code.encode(code.message(release_id))
    return ALPHA * SYNC + BETA * KEY * (2.0 * coded[LAYOUT] - 1.0)


def payload_tile(release_id: int) -> np.ndarray:
    """What a fold holds of the part of the release's tile that only this release has (the
    sync taken out)."""
    return _highpass(_pixels(_chips(release_id) - ALPHA * SYNC))


def pattern(shape: tuple[int, int], release_id: int) -> np.ndarray:
    """The mark for an image of `shape` in 8-bit gray levels, anchored at its top-left pixel."""
    reps = (-(-shape[0] // TILE), -(-shape[1] // TILE))
    return AMP * np.tile(tile(release_id), reps)[: shape[0], : shape[1]]


def residual(view: np.ndarray) -> np.ndarray:
    """The fine detail that carries the mark: the image less its local mean, divided by
    its local spread (so edges and noisy regions do not outvote the rest), clipped at ±3. The
    spread is taken over the nearest pixels only (`SPREAD`): the blocky edges of an enlarged
    image then cost only the pixels on them, not a 9×9 neighbourhood each."""
    x = view.astype(np.float64)
    r = x - ndimage.uniform_filter(x, LOCAL, mode="reflect")
    power = np.maximum(ndimage.uniform_filter(r * r, SPREAD, mode="reflect"), 0.0)
    return np.clip(r / (np.sqrt(power) + 1.0), -3.0, 3.0)


def centre(array: np.ndarray) -> np.ndarray:
    """The centred WINDOW-square part of the last two axes (detection time stays bounded)."""
    h, w = array.shape[-2:]
    top, left = max(0, (h - WINDOW) // 2), max(0, (w - WINDOW) // 2)
    return array[..., top : top + WINDOW, left : left + WINDOW]


def fold(r: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """Mean residual per tile pixel, each pixel's centre mapped back by rotating by -angle and
    dividing by scale (the tile's unknown offset is left to `peak`)."""
    h, w = r.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    c, s = np.cos(angle), np.sin(angle)
    u = np.floor((c * y + s * x) / scale).astype(np.int64) % TILE
    v = np.floor((-s * y + c * x) / scale).astype(np.int64) % TILE
    index = (u * TILE + v).ravel()
    total = np.bincount(index, r.ravel(), TILE * TILE)
    count = np.bincount(index, None, TILE * TILE)
    return (total / np.maximum(count, 1)).reshape(TILE, TILE)


def peak(folded: np.ndarray, reference: np.ndarray) -> tuple[float, tuple[int, int]]:
    """(z, offset): the largest circular correlation with `reference` over all TILE² offsets,
    each in standard deviations of the offsets of its parity (row and column offset mod 2):
    about N(0, 1) per offset without mark. Content enlarged or interpolated by whole factors
    meets the 2-px chips' edges at even offsets more than at odd ones, so one spread for the
    whole surface made even offsets' chance peaks look 1.4x larger (two thirds of unmarked
    enlarged phantoms cleared the identity's lenient bar, where the bound allows 10 %). The
    spreads leave out the highest peak's 5x5 neighbourhood: a mark's peak and its side lobes
    would otherwise inflate the spread of the quarter of the offsets they fall in. z is that
    of the most significant offset, which the bound covers; the offset returned is the largest
    correlation within 2 px of it."""
    surface = np.real(np.fft.ifft2(np.fft.fft2(folded) * np.conj(np.fft.fft2(reference))))
    keep = np.ones((TILE, TILE), dtype=bool)
    keep[_around(int(np.argmax(_by_parity(surface, keep))))] = False
    z = _by_parity(surface, keep)
    k = int(np.argmax(z))
    # The offset is the largest correlation near that peak: a quieter parity class's side lobe
    # can stand more deviations out than the true peak beside it in a noisier class.
    near = _around(k)
    i, j = np.unravel_index(int(np.argmax(surface[near])), (5, 5))
    return float(z.flat[k]), (int(near[0][i, 0]), int(near[1][0, j]))


def _around(k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (row, column) index grids of the 5x5 offsets around flat offset `k`, wrapping."""
    return np.ix_(
        np.arange(k // TILE - 2, k // TILE + 3) % TILE, np.arange(k % TILE - 2, k % TILE + 3) % TILE
    )


def _by_parity(surface: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`surface` standardised per offset parity class, from the mean and spread of the kept
    offsets of each class."""
    values = surface.reshape(TILE // 2, 2, TILE // 2, 2)
    weights = keep.reshape(values.shape).astype(np.float64)
    n = weights.sum(axis=(0, 2), keepdims=True)
    mean = (values * weights).sum(axis=(0, 2), keepdims=True) / n
    spread = np.sqrt((((values - mean) ** 2) * weights).sum(axis=(0, 2), keepdims=True) / n)
    return ((values - mean) / (spread + 1e-12)).reshape(TILE, TILE)


def autocorrelation(r: np.ndarray) -> np.ndarray:
    """Linear (zero-padded) autocorrelation of the whitened residual per overlapping pixel, 1
    at lag 0. Whitening (each frequency's power over its `WHITEN`-bin neighbourhood's) leaves
    the tile's periodic lines standing: without it the true lattice of a smooth radiograph
    after 0.75x and JPEG 75 was not among the 4 candidates in 5 of 20 images; with it, it came
    first in 80 of 80 attacked images (four sources and attacks)."""
    h, w = r.shape
    size = (2 * h, 2 * w)
    power = np.abs(np.fft.rfft2(r - r.mean(), s=size)) ** 2
    local = ndimage.uniform_filter(power, WHITEN, mode="wrap")
    white = np.divide(power, local, out=np.zeros_like(power), where=local > 0)
    acf = np.fft.irfft2(white, s=size)
    if acf[0, 0] <= 0:  # a flat residual: no lattice to find
        return np.zeros_like(acf)
    overlap = np.fft.irfft2(np.abs(np.fft.rfft2(np.ones_like(r), s=size)) ** 2, s=size)
    return acf / np.maximum(overlap, 0.25 * h * w) / (acf[0, 0] / (h * w))


_LATTICE = np.array([(1, 0), (0, 1), (1, 1), (1, -1), (2, 0), (0, 2), (2, 1), (1, 2)], float)
_BETWEEN = np.array([(0.5, 0), (0, 0.5), (0.5, 0.5), (0.5, -0.5)], float)


def lattice_candidates(r: np.ndarray, top: int = TOP) -> list[tuple[float, float]]:
    """The `top` (angle, scale) pairs whose tile lattice best matches the autocorrelation
    peaks: mean autocorrelation at the lattice points less at the points halfway between
    (which are peaks when the true period is half the candidate's). Lags past 0.6 of the image
    are not scored; candidates closer than 1° and 4 % are merged."""
    acf = autocorrelation(r)
    h, w = r.shape
    angle, scale = (g.ravel() for g in np.meshgrid(ANGLES, SCALES, indexing="ij"))
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]

    def mean_at(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dy = scale[:, None] * TILE * (c * points[:, 0] - s * points[:, 1])
        dx = scale[:, None] * TILE * (s * points[:, 0] + c * points[:, 1])
        inside = (np.abs(dy) <= 0.6 * h) & (np.abs(dx) <= 0.6 * w)
        coords = [dy.ravel() % (2 * h), dx.ravel() % (2 * w)]
        values = ndimage.map_coordinates(acf, coords, order=1, mode="wrap").reshape(dy.shape)
        n = inside.sum(axis=1)
        return np.where(inside, values, 0.0).sum(axis=1) / np.maximum(n, 1), n

    on, n_on = mean_at(_LATTICE)
    score = np.where(n_on >= 2, on - mean_at(_BETWEEN)[0], -np.inf)
    chosen: list[tuple[float, float]] = []
    for k in np.argsort(-score):
        if len(chosen) == top or not np.isfinite(score[k]):
            break
        a, z = float(angle[k]), float(scale[k])
        if all(not _near(a, z, a0, z0) for a0, z0 in chosen):
            chosen.append((a, z))
    return chosen


@dataclass(frozen=True)
class Alignment:
    """The best fold found: its peak z, the threshold its search earned, and the geometry."""

    z: float
    threshold: float
    angle: float
    scale: float
    offset: tuple[int, int]
    folded: np.ndarray

    @property
    def found(self) -> bool:
        return self.z >= self.threshold


def threshold(budget: float, alignments: int) -> float:
    """The z a best-of-`alignments` fold must reach for P(false alarm) <= budget (Bonferroni
    over every alignment and every tile offset)."""
    return float(-ndtri(budget / (alignments * TILE * TILE)))  # scipy.special: a light import


def alignments(r: np.ndarray, reference: np.ndarray, budget: float) -> Iterator[Alignment]:
    """The geometries under which `r` may fold onto `reference`, for the caller to read in
    turn until one gives the id: those past their bars, best margin first (at most `READS`
    lattices), or the best one alone (not found) when none is.

    The identity comes first when its peak clears a bar `EARLY` times the budget: an untouched
    or cropped image needs no search. Only if that does not read does the search run: the
    lattice candidates (and every scale at which the image holds few periods; for small images
    every scale and angle) are folded and the best refined on a finer grid. The identity is
    judged against `IDENTITY_SHARE` of the budget and the other alignments share the rest, each
    bar counting every alignment of its share, so the false-alarm rate stays within the
    budget; several may pass (a chance peak of the identity beside the true rescaled lattice,
    which the code then tells apart)."""

    first = identity(r, reference, budget)
    if first.found:
        yield first

    def at(angle: float, scale: float) -> tuple[float, float, float]:
        return peak(fold(r, angle, scale), reference)[0], angle, scale

    line = np.exp(np.arange(np.log(SCALES[0]), np.log(SCALES[-1]), LINE_STEP))
    candidates = lattice_candidates(r)
    if min(r.shape) <= SMALL:
        candidates += [(0.0, float(z)) for z in line]
        candidates += [(float(a), 1.0) for a in np.deg2rad(np.arange(-6.0, 6.01, 0.25)) if a]
    else:
        candidates += [(0.0, float(z)) for z in line if min(r.shape) <= PERIODS * TILE * z]
    tried = [at(a, z) for a, z in candidates]
    best = max([(first.z, 0.0, 1.0), *tried])
    for angle_step, scale_step in REFINE:
        grid = [(best[1] + i * angle_step, best[2] * (1 + j * scale_step)) for i in (-1, 0, 1)
                for j in (-1, 0, 1) if i or j]  # fmt: skip
        tried += [at(a, z) for a, z in grid]
        best = max([best, *tried[-len(grid) :]])
    bar = threshold(budget * (1 - IDENTITY_SHARE), len(tried))
    own = replace(first, threshold=threshold(budget * IDENTITY_SHARE, 1))
    scored = [(own.z - own.threshold, own.angle, own.scale, own.threshold)]
    scored += [(z - bar, a, s, bar) for z, a, s in tried]
    scored.sort(key=lambda t: -t[0])
    passed: list[tuple[float, float, float, float]] = []
    for t in scored:
        if len(passed) == READS or t[0] < 0:
            break
        if all(not _near(t[1], t[2], p[1], p[2]) for p in passed):
            passed.append(t)
    for _, a, s, b in passed or scored[:1]:
        yield _aligned(r, reference, a, s, b)


def _near(angle: float, scale: float, angle0: float, scale0: float) -> bool:
    """Within 1° and 4 % of each other: one lattice, not two."""
    return abs(angle - angle0) <= np.deg2rad(1.0) and abs(np.log(scale / scale0)) <= 0.04


def identity(r: np.ndarray, reference: np.ndarray, budget: float) -> Alignment:
    """The untouched geometry against the early bar (`EARLY` times the budget, one alignment):
    what `alignments` tries first, and what embedding checks its own mark with."""
    return _aligned(r, reference, 0.0, 1.0, threshold(budget * EARLY, 1))


def _aligned(
    r: np.ndarray, reference: np.ndarray, angle: float, scale: float, bar: float
) -> Alignment:
    folded = fold(r, angle, scale)
    z, offset = peak(folded, reference)
    return Alignment(z, bar, angle, scale, offset, folded)


def soft_bits(alignment: Alignment) -> np.ndarray:
    """Per coded bit, the correlation of the fold with its chips' readout pattern (> 0 reads
    1), after taking out the sync's share."""
    aligned = np.roll(alignment.folded, (-alignment.offset[0], -alignment.offset[1]), (0, 1))
    gain = float((aligned * SYNC_TILE).sum() / (SYNC_TILE * SYNC_TILE).sum())
    return _BIT_PATTERNS @ (aligned - gain * SYNC_TILE).ravel()
