"""Ground-truth 3D T1-like brain phantom whose every voxel follows a documented rule.

Voxels are 1 mm isotropic; array axes (0, 1, 2) are world (x, y, z) in RAS+ (x towards the
patient's right, y anterior, z superior) and the volume centre is world (0, 0, 0) (see `affine`).
Geometry is written in normalised coordinates p = world / (size / 2), so anatomy scales with
size. `draw_case` takes all randomness from the caller's generator; `render` is pure.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from synthgen.data.phantoms.common import Phantom, check_prevalence, check_size

SIZE_RANGE = (16, 256)
DEFAULT_PREVALENCE = MappingProxyType({"lesion": 0.3})
SEXES = ("F", "M")
AGE_RANGE = (20, 90)
PARENCHYMA_LABEL, VENTRICLE_LABEL = 1, 2
VOXEL_VOLUME_MM3 = 1.0

HEAD_RADII = (0.78, 0.92, 0.84)  # x (left-right), y (anterior-posterior), z (inferior-superior)
HEAD_SCALE = MappingProxyType({"F": 0.94, "M": 1.0})
HEAD_JITTER = 0.02  # per axis, multiplicative
SKULL_OUTER, BRAIN_OUTER = 0.90, 0.82  # fractions of the head radii
VENTRICLE_CENTRES = ((0.14, 0.02, 0.10), (-0.14, 0.02, 0.10))  # fixed: patient right, left
VENTRICLE_RADII = (0.085, 0.24, 0.12)
VENTRICLE_GROWTH = 2.0  # volume factor 1 at the youngest age, 1 + growth at the oldest
VENTRICLE_INDIVIDUAL = 0.08  # per case, shared by both ventricles, multiplicative on radii
VENTRICLE_JITTER = 0.05  # per ventricle and axis, multiplicative

BACKGROUND, SCALP, SKULL, PARENCHYMA, CSF, LESION = 0.0, 0.70, 0.08, 0.50, 0.12, 0.80
LESION_RADIUS = (0.06, 0.12)
LESION_BOX = ((0.05, 0.50), (-0.45, 0.55), (-0.15, 0.45))  # |x|, y, z ranges of the centre
MIN_RADIUS_VOX, MARGIN_VOX = 0.9, 0.5
PLACEMENT_BATCH, MAX_PLACEMENT_BATCHES = 64, 200


@dataclass(frozen=True)
class Site:
    """Acquisition settings of one site: multiplicative bias field exp(g . p) and noise SD."""

    gradient: tuple[float, float, float]
    noise_sd: float


SITES = MappingProxyType(
    {
        "A": Site(gradient=(0.08, 0.0, 0.0), noise_sd=0.010),
        "B": Site(gradient=(0.0, 0.0, 0.20), noise_sd=0.025),
        "C": Site(gradient=(0.0, 0.15, -0.20), noise_sd=0.040),
    }
)


@dataclass(frozen=True)
class BrainOptions:
    """What a brain phantom run may vary; validated on construction."""

    size: int = 32
    prevalence: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))

    def __post_init__(self) -> None:
        check_size("BrainOptions.size", self.size, SIZE_RANGE)
        merged = check_prevalence("BrainOptions.prevalence", self.prevalence, DEFAULT_PREVALENCE)
        object.__setattr__(self, "prevalence", merged)


@dataclass(frozen=True)
class Lesion:
    """A drawn lesion: centre and radius in normalised units (radius >= 0.9 voxel)."""

    side: str
    centre: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class BrainCase:
    """Every random choice of one case, so rendering is a pure function of it."""

    size: int
    sex: str
    age: int
    site: str
    head_radii: tuple[float, float, float]
    ventricle_radii: tuple[tuple[float, float, float], tuple[float, float, float]]
    lesion: Lesion | None
    noise_seed: int


def affine(size: int) -> np.ndarray:
    """Voxel-to-world matrix: 1 mm isotropic, RAS+ axes, volume centre at world (0, 0, 0)."""
    out = np.eye(4)
    out[:3, 3] = -(size - 1) / 2.0
    return out


def sample(rng: np.random.Generator, opts: BrainOptions) -> Phantom:
    """One case; all randomness comes from `rng`."""
    return render(draw_case(rng, opts))


def draw_case(rng: np.random.Generator, opts: BrainOptions) -> BrainCase:
    """Draw every random choice of a case (covariates, lesion, site, geometry, noise seed)."""
    sex = SEXES[int(rng.integers(len(SEXES)))]
    age = int(rng.integers(AGE_RANGE[0], AGE_RANGE[1] + 1))
    has_lesion = bool(rng.random() < opts.prevalence["lesion"])
    site = "ABC"[int(rng.integers(3))]
    head_jitter = rng.uniform(1.0 - HEAD_JITTER, 1.0 + HEAD_JITTER, 3)
    head_radii = tuple(
        float(r * HEAD_SCALE[sex] * j) for r, j in zip(HEAD_RADII, head_jitter, strict=True)
    )
    individual = rng.uniform(1.0 - VENTRICLE_INDIVIDUAL, 1.0 + VENTRICLE_INDIVIDUAL)
    jitter = individual * rng.uniform(1.0 - VENTRICLE_JITTER, 1.0 + VENTRICLE_JITTER, (2, 3))
    ventricle_radii = (_ventricle_radii(age, jitter[0]), _ventricle_radii(age, jitter[1]))
    lesion = _draw_lesion(rng, opts.size, head_radii, ventricle_radii) if has_lesion else None
    return BrainCase(
        size=opts.size,
        sex=sex,
        age=age,
        site=site,
        head_radii=head_radii,
        ventricle_radii=ventricle_radii,
        lesion=lesion,
        noise_seed=int(rng.integers(np.iinfo(np.int64).max)),
    )


def render(case: BrainCase) -> Phantom:
    """Paint tissues, lesion, bias field and noise of a case; masks mark exactly the changes."""
    p = _grid(case.size)
    head = _ellipsoid(p, (0.0, 0.0, 0.0), case.head_radii)
    skull = _ellipsoid(p, (0.0, 0.0, 0.0), tuple(SKULL_OUTER * r for r in case.head_radii))
    brain = _ellipsoid(p, (0.0, 0.0, 0.0), tuple(BRAIN_OUTER * r for r in case.head_radii))
    ventricles = _ventricles(p, case.ventricle_radii)
    anatomy = np.zeros(head.shape, dtype=np.uint8)
    anatomy[brain] = PARENCHYMA_LABEL
    anatomy[ventricles] = VENTRICLE_LABEL
    raw = np.where(head, SCALP, BACKGROUND).astype(np.float32)
    raw[skull] = SKULL
    raw[brain] = PARENCHYMA
    raw[ventricles] = CSF
    lesion_mask = np.zeros(head.shape, dtype=np.uint8)
    if case.lesion is not None:
        inside = _ellipsoid(p, case.lesion.centre, (case.lesion.radius,) * 3)
        inside &= anatomy == PARENCHYMA_LABEL
        raw[inside] = LESION
        lesion_mask[inside] = 1
    site = SITES[case.site]
    clean = np.clip(raw * _bias(p, site), 0.0, 1.0)
    noise_rng = np.random.default_rng(case.noise_seed)
    noise = noise_rng.standard_normal(clean.shape, dtype=np.float32) * np.float32(site.noise_sd)
    image = np.clip(clean + noise, 0.0, 1.0)
    volume = float(np.count_nonzero(ventricles)) * VOXEL_VOLUME_MM3
    return Phantom(
        image=image.astype(np.float32),
        clean=clean.astype(np.float32),
        masks={"lesion_mask": lesion_mask, "anatomy": anatomy},
        row=_row(case, volume),
    )


def schema_columns(opts: BrainOptions) -> dict[str, dict]:
    """The schema's `columns` mapping; the ventricle_volume range is exact for `opts.size`."""
    return {
        "id": {"role": "id"},
        "image": {"role": "image"},
        "split": {"role": "split", "levels": ["train", "val", "test"]},
        "lesion_mask": {"role": "mask", "labels": {1: "lesion"}},
        "anatomy": {"role": "mask", "labels": {1: "parenchyma", 2: "ventricles"}},
        "lesion": {"role": "label", "levels": [0, 1]},
        "sex": {"role": "covariate", "levels": list(SEXES)},
        "age": {"role": "covariate", "range": list(AGE_RANGE)},
        "site": {"role": "covariate", "levels": list(SITES)},
        "ventricle_volume": {"role": "covariate", "range": list(ventricle_volume_range(opts.size))},
        "report": {"role": "text"},
    }


@functools.cache
def ventricle_volume_range(size: int) -> tuple[float, float]:
    """Smallest and largest ventricle volume (mm^3) the generator can produce at `size`.

    Ventricle centres are fixed and every radius grows monotonically with age and jitter, so the
    voxel count is monotone in the radii; rendering the extreme radii (widened by a relative 1e-9
    against rounding) bounds every possible case.
    """
    p = _grid(size)
    low_jitter = (1.0 - VENTRICLE_INDIVIDUAL) * (1.0 - VENTRICLE_JITTER) * (1.0 - 1e-9)
    high_jitter = (1.0 + VENTRICLE_INDIVIDUAL) * (1.0 + VENTRICLE_JITTER) * (1.0 + 1e-9)
    low = _ventricle_radii(AGE_RANGE[0], np.full(3, low_jitter))
    high = _ventricle_radii(AGE_RANGE[1], np.full(3, high_jitter))
    count_low = np.count_nonzero(_ventricles(p, (low, low)))
    count_high = np.count_nonzero(_ventricles(p, (high, high)))
    return float(count_low) * VOXEL_VOLUME_MM3, float(count_high) * VOXEL_VOLUME_MM3


def _ventricle_radii(age: int, jitter: np.ndarray) -> tuple[float, float, float]:
    """Ventricle half-axes: volume grows linearly with age (radii with its cube root) × jitter."""
    t = (age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0])
    scale = (1.0 + VENTRICLE_GROWTH * t) ** (1.0 / 3.0)
    return tuple(float(r * scale * j) for r, j in zip(VENTRICLE_RADII, jitter, strict=True))


def _draw_lesion(
    rng: np.random.Generator,
    size: int,
    head_radii: tuple[float, float, float],
    ventricle_radii: tuple[tuple[float, float, float], ...],
) -> Lesion:
    """Place a sphere near the ventricles, at least MARGIN_VOX inside parenchyma on one side."""
    vox = 2.0 / size
    radius = max(rng.uniform(*LESION_RADIUS), MIN_RADIUS_VOX * vox)
    clearance = radius + MARGIN_VOX * vox
    side = ("right", "left")[int(rng.integers(2))]
    sign = 1.0 if side == "right" else -1.0
    brain_radii = np.array([BRAIN_OUTER * r for r in head_radii])
    low, high = np.array(LESION_BOX).T
    for _ in range(MAX_PLACEMENT_BATCHES):
        centres = rng.uniform(low, high, (PLACEMENT_BATCH, 3)) * [sign, 1.0, 1.0]
        # A point at normalised radius rho lies (1 - rho) * minor axis or more inside an ellipsoid.
        rho = np.sqrt(((centres / brain_radii) ** 2).sum(axis=1))
        ok = (1.0 - rho) * brain_radii.min() >= clearance
        ok &= np.abs(centres[:, 0]) >= clearance
        for centre, radii in zip(VENTRICLE_CENTRES, ventricle_radii, strict=True):
            ok &= _distance_outside(centres - centre, np.array(radii)) >= clearance
        if ok.any():
            return Lesion(side, tuple(float(c) for c in centres[np.argmax(ok)]), float(radius))
    raise RuntimeError(f"could not place a lesion of radius {radius:.3f} at size {size}")


def _distance_outside(points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Euclidean distance from points (k, 3), relative to an ellipsoid's centre, to the ellipsoid.

    Points inside get 0. For a point y outside, the closest surface point is a^2 y / (t + a^2)
    with t > 0 the root of sum((a y / (t + a^2))^2) = 1, found by bisection on [0, |a y|].
    """
    y = np.abs(points)
    inside = ((y / radii) ** 2).sum(axis=1) <= 1.0
    low = np.zeros(len(y))
    high = np.linalg.norm(y * radii, axis=1)
    for _ in range(60):
        t = (low + high) / 2.0
        outside = ((radii * y / (t[:, None] + radii**2)) ** 2).sum(axis=1) > 1.0
        low = np.where(outside, t, low)
        high = np.where(outside, high, t)
    closest = radii**2 * y / (high[:, None] + radii**2)
    return np.where(inside, 0.0, np.linalg.norm(y - closest, axis=1))


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised voxel-centre coordinates as three broadcastable axis vectors."""
    axis = ((np.arange(size) - (size - 1) / 2.0) * (2.0 / size)).astype(np.float32)
    axis.flags.writeable = False
    return axis[:, None, None], axis[None, :, None], axis[None, None, :]


def _ellipsoid(
    p: tuple[np.ndarray, np.ndarray, np.ndarray],
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
) -> np.ndarray:
    """Boolean map of voxel centres inside an axis-aligned ellipsoid."""
    x, y, z = (((q - c) / np.float32(r)) ** 2 for q, c, r in zip(p, centre, radii, strict=True))
    return (x + y) + z <= 1.0


def _ventricles(
    p: tuple[np.ndarray, np.ndarray, np.ndarray],
    radii: tuple[tuple[float, float, float], ...],
) -> np.ndarray:
    """Union of the two lateral-ventricle ellipsoids."""
    right, left = (_ellipsoid(p, c, r) for c, r in zip(VENTRICLE_CENTRES, radii, strict=True))
    return right | left


def _bias(p: tuple[np.ndarray, np.ndarray, np.ndarray], site: Site) -> np.ndarray:
    """Smooth multiplicative bias field exp(g . p) of a site."""
    g = site.gradient
    return np.exp((g[0] * p[0] + g[1] * p[1]) + g[2] * p[2]).astype(np.float32)


def _row(case: BrainCase, ventricle_volume: float) -> dict[str, object]:
    """Manifest values of a case; ventricle_volume is measured from the rendered anatomy."""
    sex_word = "male" if case.sex == "M" else "female"
    finding = (
        f"Periventricular lesion in the {case.lesion.side} hemisphere."
        if case.lesion is not None
        else "No lesion."
    )
    return {
        "sex": case.sex,
        "age": case.age,
        "site": case.site,
        "lesion": int(case.lesion is not None),
        "ventricle_volume": ventricle_volume,
        "report": f"{case.age}-year-old {sex_word}. {finding}",
    }


def _rules() -> str:
    """Markdown description of every generating rule, built from the constants above."""
    sites = "\n".join(f"| {name} | {s.gradient} | {s.noise_sd} |" for name, s in SITES.items())
    vc, vr = VENTRICLE_CENTRES, VENTRICLE_RADII
    return f"""\
## brain3d phantom: generating rules

Each case is a 3D volume of shape (size, size, size), size {SIZE_RANGE[0]}..{SIZE_RANGE[1]}, with
1 mm isotropic voxels. Array axes 0, 1, 2 are world x, y, z in RAS+ (x towards the patient's
right, y anterior, z superior); the affine is the identity rotation with the volume centre at
world (0, 0, 0). Geometry is given in normalised coordinates p = world / (size / 2), so anatomy
scales with size. "left"/"right" mean the patient's side (right = positive x).

**Covariates.** `sex` is F or M with probability 1/2 each; `age` is an integer uniform on
{AGE_RANGE[0]}..{AGE_RANGE[1]}; `site` is A, B or C with probability 1/3 each.

**Anatomy.** Head (scalp surface): ellipsoid at the origin with radii {HEAD_RADII} (x, y, z)
× {HEAD_SCALE["M"]} (M) or {HEAD_SCALE["F"]} (F) × per-axis uniform jitter 1 ± {HEAD_JITTER}.
Skull outer surface: the head ellipsoid scaled by {SKULL_OUTER}; brain: scaled by {BRAIN_OUTER}.
Two lateral ventricles: ellipsoids centred at {vc[0]} (right) and {vc[1]} (left), fixed, with
radii {vr} × s(age) × k × per-ventricle, per-axis uniform jitter 1 ± {VENTRICLE_JITTER}, where
k is one per-case uniform factor 1 ± {VENTRICLE_INDIVIDUAL} shared by both ventricles and
s(age) = (1 + {VENTRICLE_GROWTH} × (age − {AGE_RANGE[0]}) / {AGE_RANGE[1] - AGE_RANGE[0]})^(1/3),
so ventricle volume grows linearly with age to {1 + VENTRICLE_GROWTH:g}× at age {AGE_RANGE[1]}.
Ventricles do not depend on sex. `anatomy` mask: 1 brain parenchyma, 2 ventricles, 0 elsewhere.
`ventricle_volume` = number of ventricle voxels × {VOXEL_VOLUME_MM3} mm³, measured from the
rendered anatomy; its schema range is the exact count at the smallest and largest possible radii
for that size (the count is monotone in the radii because the centres are fixed).

**T1-like intensities.** Background {BACKGROUND}, scalp {SCALP}, skull {SKULL}, parenchyma
{PARENCHYMA}, ventricles (CSF) {CSF}, lesion {LESION}.

**Lesion** (label `lesion`, probability = prevalence, default {DEFAULT_PREVALENCE["lesion"]}).
Side right/left with probability 1/2; a sphere of radius uniform in
{LESION_RADIUS[0]}..{LESION_RADIUS[1]} (at least {MIN_RADIUS_VOX} voxel) whose centre is uniform
in |x| {LESION_BOX[0][0]}..{LESION_BOX[0][1]} on that side,
y {LESION_BOX[1][0]}..{LESION_BOX[1][1]}, z {LESION_BOX[2][0]}..{LESION_BOX[2][1]}
(periventricular), redrawn (in batches of {PLACEMENT_BATCH}, first valid one kept) until the
sphere lies at least {MARGIN_VOX} voxel inside the brain, at least {MARGIN_VOX} voxel from both
ventricles (exact point-to-ellipsoid distance) and on its side of the midline. `lesion_mask` =
its voxels, exactly where the image changed.

**Site.** `clean` = clip(tissue intensity × exp(g · p), 0, 1): the site's smooth multiplicative
bias field is part of `clean`. `image` = clip(clean + Gaussian noise with the site's SD, 0, 1).

| site | bias gradient g (x, y, z) | noise SD |
|---|---|---|
{sites}

**Report.** "<age>-year-old <male|female>." followed by "Periventricular lesion in the
<right|left> hemisphere." or "No lesion.".
"""


RULES: str = _rules()
