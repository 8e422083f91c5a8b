"""Ground-truth 2D chest-radiograph phantom whose every pixel follows a documented rule.

Coordinates are normalised to the half-frame: x (columns) and y (rows) run over (-1, 1) at pixel
centres, row 0 is the head and column 0 is the patient's right (radiological convention), so the
patient's left lung and the heart sit on the image's right. `draw_case` takes all randomness from
the caller's generator; `render` is a pure function of the drawn case.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from synthgen.data.phantoms import reports
from synthgen.data.phantoms.common import Phantom, check_prevalence, check_probability, check_size

SIZE_RANGE = (32, 512)
FINDINGS = ("nodule", "effusion")
DEFAULT_PREVALENCE = MappingProxyType({"nodule": 0.3, "effusion": 0.2})
SEXES = ("F", "M")
SIDES = ("right", "left")  # the patient's
AGE_RANGE = (20, 90)
SUBTYPES = ("none", "typical", "subtle")
SIDE_LABEL = {side: i + 1 for i, side in enumerate(SIDES)}  # the anatomy mask's lung labels
HEART_LABEL = 3

BODY_HALF_WIDTH = MappingProxyType({"F": 0.74, "M": 0.86})
BODY_WIDTH_JITTER = 0.04
BODY_HALF_HEIGHT = 0.92
LUNG_OFFSET, LUNG_HALF_WIDTH = 0.45, 0.32  # fractions of the body half-width
LUNG_CENTRE_Y, LUNG_HALF_HEIGHT = -0.05, 0.60
HEART_OFFSET, HEART_HALF_WIDTH = 0.12, 0.30  # fractions of the body half-width
HEART_CENTRE_Y, HEART_HALF_HEIGHT = 0.30, 0.24

BACKGROUND, SOFT_TISSUE, LUNG, HEART = 0.0, 0.42, 0.14, 0.55
RIB_PERIOD, RIB_CURVE, RIB_SHARPNESS = 0.22, 0.25, 3
RIB_CONTRAST = (0.10, 0.04)  # at the youngest and the oldest age
TEXTURE_WAVES, TEXTURE_FREQUENCY = 8, (3.0, 7.0)
TEXTURE_AMPLITUDE = (0.005, 0.04)  # at the youngest and the oldest age

NODULE_RADIUS = MappingProxyType({"small": (0.04, 0.055), "large": (0.07, 0.10)})
SUBTLE_RADIUS = (0.035, 0.05)
NODULE_CONTRAST = MappingProxyType({"typical": (0.22, 0.32), "subtle": (0.05, 0.09)})
NODULE_MAX_BOTTOM_V = -0.10  # nodules stay above every meniscus and the heart
MIN_RADIUS_PX, MARGIN_PX = 0.75, 0.5
MIN_RADIUS_PX_RANGE = (0.5, 2.0)
EFFUSION_LEVEL = MappingProxyType({"small": (0.60, 0.72), "large": (0.25, 0.40)})
MENISCUS_RISE = 0.25
MAX_PLACEMENT_TRIES = 10_000
REPORT_STREAM = 1  # the report's wording generator: (noise seed, this)


@dataclass(frozen=True)
class Site:
    """Acquisition settings of one site: contrast curve, noise and burned-in marker."""

    gamma: float
    noise_sd: float
    corner: str
    pattern: str


SITES = MappingProxyType(
    {
        "A": Site(gamma=1.0, noise_sd=0.010, corner="top-left", pattern="solid"),
        "B": Site(gamma=0.75, noise_sd=0.020, corner="top-right", pattern="frame"),
        "C": Site(gamma=1.3, noise_sd=0.035, corner="bottom-right", pattern="cross"),
    }
)


@dataclass(frozen=True)
class ChestOptions:
    """What a chest phantom run may vary; validated on construction."""

    size: int = 64
    shortcut: float | None = None
    hidden_stratum: float = 0.0
    prevalence: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))
    min_nodule_px: float = MIN_RADIUS_PX
    report_phrasing: str = "train"

    def __post_init__(self) -> None:
        check_size("ChestOptions.size", self.size, SIZE_RANGE)
        if self.report_phrasing not in reports.PHRASINGS:
            raise ValueError(f"ChestOptions.report_phrasing must be one of {reports.PHRASINGS}")
        if self.shortcut is not None:
            check_probability("ChestOptions.shortcut", self.shortcut)
        check_probability("ChestOptions.hidden_stratum", self.hidden_stratum)
        lo, hi = MIN_RADIUS_PX_RANGE
        if not lo <= self.min_nodule_px <= hi:
            raise ValueError(f"ChestOptions.min_nodule_px must be in [{lo}, {hi}]")
        merged = check_prevalence("ChestOptions.prevalence", self.prevalence, DEFAULT_PREVALENCE)
        object.__setattr__(self, "prevalence", merged)


@dataclass(frozen=True)
class Nodule:
    """A drawn nodule: centre and radius in normalised frame units (radius >= min_nodule_px)."""

    side: str
    x: float
    y: float
    radius: float
    contrast: float
    size: str
    subtype: str


@dataclass(frozen=True)
class Effusion:
    """A drawn effusion: fluid below v = level - rise * lateral in that lung's own coordinates."""

    side: str
    level: float
    size: str


@dataclass(frozen=True)
class ChestCase:
    """Every random choice of one case, so rendering is a pure function of it."""

    size: int
    sex: str
    age: int
    site: str
    half_width: float
    rib_phase: float
    waves: tuple[tuple[float, float, float], ...]
    nodule: Nodule | None
    effusion: Effusion | None
    noise_seed: int
    report_phrasing: str = "train"


def sample(rng: np.random.Generator, opts: ChestOptions) -> Phantom:
    """One case; all randomness comes from `rng`."""
    return render(draw_case(rng, opts))


def draw_case(rng: np.random.Generator, opts: ChestOptions) -> ChestCase:
    """Draw every random choice of a case (covariates, findings, site, geometry, noise seed)."""
    sex = SEXES[int(rng.integers(len(SEXES)))]
    age = int(rng.integers(AGE_RANGE[0], AGE_RANGE[1] + 1))
    has_nodule = bool(rng.random() < opts.prevalence["nodule"])
    has_effusion = bool(rng.random() < opts.prevalence["effusion"])
    site = _draw_site(rng, has_nodule, opts.shortcut)
    half_width = BODY_HALF_WIDTH[sex] + rng.uniform(-BODY_WIDTH_JITTER, BODY_WIDTH_JITTER)
    rib_phase = rng.uniform(0.0, 2.0 * math.pi)
    waves = _draw_waves(rng)
    nodule = _draw_nodule(rng, opts, half_width) if has_nodule else None
    effusion = _draw_effusion(rng) if has_effusion else None
    return ChestCase(
        size=opts.size,
        sex=sex,
        age=age,
        site=site,
        half_width=float(half_width),
        rib_phase=float(rib_phase),
        waves=waves,
        nodule=nodule,
        effusion=effusion,
        noise_seed=int(rng.integers(np.iinfo(np.int64).max)),
        report_phrasing=opts.report_phrasing,
    )


def render(case: ChestCase) -> Phantom:
    """Paint anatomy, findings and site effects of a drawn case; masks mark exactly the changes."""
    x, y = _grid(case.size)
    anatomy = _anatomy(case.half_width, x, y)
    lungs = (anatomy == SIDE_LABEL["right"]) | (anatomy == SIDE_LABEL["left"])
    raw = np.where(_ellipse(x, y, (0.0, 0.0), (case.half_width, BODY_HALF_HEIGHT)), SOFT_TISSUE, 0)
    lung_value = LUNG + _texture(case, x, y) + _ribs(case, x, y)
    raw = np.where(lungs, lung_value, raw)
    raw[anatomy == HEART_LABEL] = HEART
    nodule_mask = np.zeros(anatomy.shape, dtype=np.uint8)
    if case.nodule is not None:
        inside, bump = _nodule(case.nodule, x, y)
        inside &= anatomy == SIDE_LABEL[case.nodule.side]
        raw[inside] += bump[inside]
        nodule_mask[inside] = 1
    effusion_mask = np.zeros(anatomy.shape, dtype=np.uint8)
    if case.effusion is not None:
        fluid = _fluid(case.effusion, case.half_width, x, y) & (
            anatomy == SIDE_LABEL[case.effusion.side]
        )
        raw[fluid] = SOFT_TISSUE
        effusion_mask[fluid] = 1
    site = SITES[case.site]
    clean = np.clip(raw, 0.0, 1.0) ** site.gamma
    clean[_marker(case.size, site)] = 1.0
    noise = np.random.default_rng(case.noise_seed).standard_normal(clean.shape) * site.noise_sd
    image = np.clip(clean + noise, 0.0, 1.0)
    return Phantom(
        image=image.astype(np.float32),
        clean=clean.astype(np.float32),
        masks={"nodule_mask": nodule_mask, "effusion_mask": effusion_mask, "anatomy": anatomy},
        row=_row(case),
    )


def schema_columns(opts: ChestOptions) -> dict[str, dict]:
    """The schema's `columns` mapping; the chest schema does not depend on `opts`."""
    return {
        "id": {"role": "id"},
        "image": {"role": "image"},
        "split": {"role": "split", "levels": ["train", "val", "test"]},
        "nodule_mask": {"role": "mask", "labels": {1: "nodule"}},
        "effusion_mask": {"role": "mask", "labels": {1: "effusion"}},
        "anatomy": {"role": "mask", "labels": {1: "right_lung", 2: "left_lung", 3: "heart"}},
        "nodule": {"role": "label", "levels": [0, 1]},
        "effusion": {"role": "label", "levels": [0, 1]},
        "nodule_side": {
            "role": "label",
            "levels": list(SIDES),
            "optional": True,
            "description": "the nodule's lung (patient's side); empty when there is none",
        },
        "effusion_side": {
            "role": "label",
            "levels": list(SIDES),
            "optional": True,
            "description": "the effusion's side (patient's); empty when there is none",
        },
        "sex": {"role": "covariate", "levels": list(SEXES)},
        "age": {"role": "covariate", "range": list(AGE_RANGE)},
        "site": {"role": "covariate", "levels": list(SITES)},
        "report": {"role": "text"},
        "nodule_subtype": {
            "role": "ignore",
            "description": "hidden stratum: " + " / ".join(SUBTYPES) + "; never a model input",
        },
        "nodule_size": {
            "role": "ignore",
            "description": "the nodule's size class (small/large; empty without one): ground "
            "truth for what a report's size words say, never a model input",
        },
        "effusion_size": {
            "role": "ignore",
            "description": "the effusion's size class (small/large; empty without one)",
        },
    }


def _draw_site(rng: np.random.Generator, positive: bool, shortcut: float | None) -> str:
    """Uniform sites, or site B tied to the nodule label with probability `shortcut`."""
    if shortcut is None:
        return "ABC"[int(rng.integers(3))]
    p_b = shortcut if positive else 1.0 - shortcut
    u = rng.random()
    if u < p_b:
        return "B"
    return "A" if u < p_b + (1.0 - p_b) / 2.0 else "C"


def _draw_waves(rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    """Random plane waves (frequency vector, phase) whose sum is the lung texture."""
    freq = rng.uniform(*TEXTURE_FREQUENCY, TEXTURE_WAVES)
    angle = rng.uniform(0.0, math.pi, TEXTURE_WAVES)
    phase = rng.uniform(0.0, 2.0 * math.pi, TEXTURE_WAVES)
    return tuple(
        (float(f * math.cos(a)), float(f * math.sin(a)), float(p))
        for f, a, p in zip(freq, angle, phase, strict=True)
    )


def _draw_nodule(rng: np.random.Generator, opts: ChestOptions, half_width: float) -> Nodule:
    """Place a nodule in the upper part of one lung, its disk at least MARGIN_PX inside it."""
    subtle = bool(rng.random() < opts.hidden_stratum)
    side = SIDES[int(rng.integers(2))]
    if subtle:
        size, radius = "small", rng.uniform(*SUBTLE_RADIUS)
    else:
        size = ("small", "large")[int(rng.integers(2))]
        radius = rng.uniform(*NODULE_RADIUS[size])
    subtype = "subtle" if subtle else "typical"
    contrast = rng.uniform(*NODULE_CONTRAST[subtype])
    px = 2.0 / opts.size
    radius = max(radius, opts.min_nodule_px * px)
    clearance = radius + MARGIN_PX * px
    cx, cy, hw, hh = _lung_ellipse(side, half_width)
    for _ in range(MAX_PLACEMENT_TRIES):
        u, v = rng.uniform(-1.0, 1.0), rng.uniform(-1.0, NODULE_MAX_BOTTOM_V)
        # A point at normalised radius rho lies (1 - rho) * minor axis or more inside the ellipse.
        inside = (1.0 - math.hypot(u, v)) * min(hw, hh) >= clearance
        if inside and v * hh + radius <= NODULE_MAX_BOTTOM_V * hh:
            return Nodule(
                side, cx + u * hw, cy + v * hh, float(radius), float(contrast), size, subtype
            )
    raise RuntimeError(f"could not place a nodule of radius {radius:.3f} at size {opts.size}")


def _draw_effusion(rng: np.random.Generator) -> Effusion:
    """Pick the side and a size class; the meniscus level follows from the class."""
    side = SIDES[int(rng.integers(2))]
    size = ("small", "large")[int(rng.integers(2))]
    return Effusion(side, float(rng.uniform(*EFFUSION_LEVEL[size])), size)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates as a broadcastable row (x) and column (y)."""
    axis = (np.arange(size) + 0.5) * (2.0 / size) - 1.0
    return axis[None, :], axis[:, None]


def _ellipse(
    x: np.ndarray, y: np.ndarray, centre: tuple[float, float], radii: tuple[float, float]
) -> np.ndarray:
    """Boolean map of pixel centres inside an axis-aligned ellipse."""
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 <= 1.0


def _lung_ellipse(side: str, half_width: float) -> tuple[float, float, float, float]:
    """Centre and half-axes of one lung; the patient's right lung is on the image's left."""
    sign = -1.0 if side == "right" else 1.0
    return (
        sign * LUNG_OFFSET * half_width,
        LUNG_CENTRE_Y,
        LUNG_HALF_WIDTH * half_width,
        LUNG_HALF_HEIGHT,
    )


def _anatomy(half_width: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Label map: 1 right lung, 2 left lung, 3 heart (drawn over the lungs it overlaps)."""
    anatomy = np.zeros((y.shape[0], x.shape[1]), dtype=np.uint8)
    for side, label in SIDE_LABEL.items():
        cx, cy, hw, hh = _lung_ellipse(side, half_width)
        anatomy[_ellipse(x, y, (cx, cy), (hw, hh))] = label
    heart_centre = (HEART_OFFSET * half_width, HEART_CENTRE_Y)
    heart_radii = (HEART_HALF_WIDTH * half_width, HEART_HALF_HEIGHT)
    anatomy[_ellipse(x, y, heart_centre, heart_radii)] = HEART_LABEL
    return anatomy


def _age_mix(age: int, bounds: tuple[float, float]) -> float:
    """Linear interpolation from the youngest to the oldest age."""
    t = (age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0])
    return bounds[0] + t * (bounds[1] - bounds[0])


def _texture(case: ChestCase, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Lung texture: unit-variance sum of plane waves scaled up with age."""
    total = np.zeros((y.shape[0], x.shape[1]))
    for fx, fy, phase in case.waves:
        total += np.cos(2.0 * math.pi * (fx * x + fy * y) + phase)
    return total * (_age_mix(case.age, TEXTURE_AMPLITUDE) / math.sqrt(TEXTURE_WAVES / 2.0))


def _ribs(case: ChestCase, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Periodic rib bands curving down laterally; fainter with age."""
    wave = np.cos(2.0 * math.pi * (y + RIB_CURVE * x**2) / RIB_PERIOD + case.rib_phase)
    return _age_mix(case.age, RIB_CONTRAST) * ((1.0 + wave) / 2.0) ** RIB_SHARPNESS


def _nodule(nodule: Nodule, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disk membership and a dome-shaped brightening that is positive on the whole disk."""
    d2 = ((x - nodule.x) ** 2 + (y - nodule.y) ** 2) / nodule.radius**2
    bump = nodule.contrast * (0.75 + 0.25 * np.sqrt(np.clip(1.0 - d2, 0.0, 1.0)))
    return d2 <= 1.0, bump


def _fluid(effusion: Effusion, half_width: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pixels below the meniscus, which rises towards the lung's lateral edge."""
    cx, cy, hw, hh = _lung_ellipse(effusion.side, half_width)
    lateral = np.sign(cx) * (x - cx) / hw
    return (y - cy) / hh > effusion.level - MENISCUS_RISE * lateral


def _marker_size(size: int) -> int:
    """Side of the square marker block in pixels."""
    return max(3, round(0.08 * size))


def _marker(size: int, site: Site) -> np.ndarray:
    """Boolean map of the site's burned-in marker, one pixel in from its corner."""
    m = _marker_size(size)
    i, j = np.indices((m, m))
    pattern = {
        "solid": np.ones((m, m), dtype=bool),
        "frame": (i == 0) | (j == 0) | (i == m - 1) | (j == m - 1),
        "cross": (i == j) | (i + j == m - 1),
    }[site.pattern]
    rows = slice(1, 1 + m) if site.corner.startswith("top") else slice(size - 1 - m, size - 1)
    cols = slice(1, 1 + m) if site.corner.endswith("left") else slice(size - 1 - m, size - 1)
    out = np.zeros((size, size), dtype=bool)
    out[rows, cols] = pattern
    return out


def _row(case: ChestCase) -> dict[str, object]:
    """Manifest values of a case; the report's side and size words come from the drawn findings."""
    return {
        "sex": case.sex,
        "age": case.age,
        "site": case.site,
        "nodule": int(case.nodule is not None),
        "effusion": int(case.effusion is not None),
        "nodule_side": "" if case.nodule is None else case.nodule.side,
        "effusion_side": "" if case.effusion is None else case.effusion.side,
        "report": _report(case),
        "nodule_subtype": "none" if case.nodule is None else case.nodule.subtype,
        "nodule_size": "" if case.nodule is None else case.nodule.size,
        "effusion_size": "" if case.effusion is None else case.effusion.size,
    }


def _report(case: ChestCase) -> str:
    return reports.report(report_sentences(case))


def report_sentences(case: ChestCase) -> list[reports.Sentence]:
    """The case's report as sentences with their claims. The wording draws come from their own
    generator (from the noise seed), so the phrasing never changes the image."""
    findings = {
        "nodule": None if case.nodule is None else (case.nodule.side, case.nodule.size),
        "effusion": None if case.effusion is None else (case.effusion.side, case.effusion.size),
    }
    rng = np.random.default_rng([case.noise_seed, REPORT_STREAM])
    return reports.report_sentences(rng, case.age, case.sex, findings, case.report_phrasing)


def _rules() -> str:
    """Markdown description of every generating rule, built from the constants above."""
    rx, sr = NODULE_RADIUS, SUBTLE_RADIUS
    sites = "\n".join(
        f"| {name} | {s.gamma} | {s.noise_sd} | {s.corner} | {s.pattern} |"
        for name, s in SITES.items()
    )
    return f"""\
## chest2d phantom: generating rules

Each case is a 2D image of shape (size, size), size {SIZE_RANGE[0]}..{SIZE_RANGE[1]}; anatomy
scales with size. Coordinates below are normalised so the frame spans -1..1 in x (columns) and y
(rows); row 0 is the head. **Radiological convention:** the image's left is the patient's right, so
the patient's left lung (anatomy label 2) and the heart appear on the image's right. "left" and
"right" in reports and labels always mean the patient's side.

**Covariates.** `sex` is F or M with probability 1/2 each; `age` is an integer uniform on
{AGE_RANGE[0]}..{AGE_RANGE[1]}.

**Anatomy.** Body: ellipse centred at (0, 0), half-height {BODY_HALF_HEIGHT}, half-width
{BODY_HALF_WIDTH["F"]} (F) or {BODY_HALF_WIDTH["M"]} (M) plus uniform jitter of
±{BODY_WIDTH_JITTER} (so every male is wider than every female). Lungs: ellipses centred at
x = ±{LUNG_OFFSET} × body half-width, y = {LUNG_CENTRE_Y}, half-width {LUNG_HALF_WIDTH} × body
half-width, half-height {LUNG_HALF_HEIGHT}. Heart: ellipse centred at x = +{HEART_OFFSET} × body
half-width (image right), y = {HEART_CENTRE_Y}, half-width {HEART_HALF_WIDTH} × body half-width,
half-height {HEART_HALF_HEIGHT}; it covers the lung pixels it overlaps. `anatomy` mask: 1 right
lung, 2 left lung, 3 heart, 0 elsewhere.

**Intensities before the site curve.** Background {BACKGROUND}, soft tissue {SOFT_TISSUE}, heart
{HEART}, lung {LUNG} + texture + ribs. Texture: sum of {TEXTURE_WAVES} plane waves (spatial
frequency uniform in {TEXTURE_FREQUENCY[0]}..{TEXTURE_FREQUENCY[1]} cycles per unit, random
direction and phase) divided by sqrt({TEXTURE_WAVES}/2), times an amplitude rising linearly with
age from {TEXTURE_AMPLITUDE[0]} (age {AGE_RANGE[0]}) to {TEXTURE_AMPLITUDE[1]} (age
{AGE_RANGE[1]}). Ribs (lung pixels only): c × ((1 + cos(2π (y + {RIB_CURVE} x²) / {RIB_PERIOD}
+ φ)) / 2)^{RIB_SHARPNESS} with random phase φ and contrast c falling linearly with age from
{RIB_CONTRAST[0]} to {RIB_CONTRAST[1]}. Values are clipped to [0, 1].

**Nodule** (label `nodule`, probability = prevalence, default {DEFAULT_PREVALENCE["nodule"]}). Side
right/left with probability 1/2 (label `nodule_side`, empty when there is no nodule). Typical
nodules: size class small (radius {rx["small"][0]}..{rx["small"][1]}) or large (radius
{rx["large"][0]}..{rx["large"][1]}) with probability 1/2, contrast
{NODULE_CONTRAST["typical"][0]}..{NODULE_CONTRAST["typical"][1]}. Subtle nodules (hidden
stratum): small, radius {sr[0]}..{sr[1]}, contrast
{NODULE_CONTRAST["subtle"][0]}..{NODULE_CONTRAST["subtle"][1]}. Radii are in normalised units and
at least `min_nodule_px` pixels (default {MIN_RADIUS_PX}; raise it so nodules stay visible in
small images). The centre is uniform over lung coordinates (u, v) in
[-1, 1] × [-1, {NODULE_MAX_BOTTOM_V}] (u, v = offset from the lung centre / lung half-axes; v = -1
at the apex, +1 at the base), redrawn until the disk lies at least {MARGIN_PX} pixel inside its
lung and its lowest point is at or above v = {NODULE_MAX_BOTTOM_V}, so it never touches the heart
or any effusion. Inside the disk the intensity rises by contrast × (0.75 + 0.25 sqrt(1 − d²/r²)).
`nodule_mask` = the disk's pixels within that lung's label, exactly where the image changed.

**Effusion** (label `effusion`, default prevalence {DEFAULT_PREVALENCE["effusion"]}, drawn
independently of the nodule). Side right/left (label `effusion_side`, empty without an effusion)
and size class small/large with probability 1/2 each. Lung pixels of that side with
v > level − {MENISCUS_RISE} × lateral (lateral = −1 at the medial edge, +1 at the lateral edge,
so the meniscus rises laterally) take the soft-tissue intensity {SOFT_TISSUE}; level is uniform in
{EFFUSION_LEVEL["small"][0]}..{EFFUSION_LEVEL["small"][1]} (small) or
{EFFUSION_LEVEL["large"][0]}..{EFFUSION_LEVEL["large"][1]} (large). `effusion_mask` = those pixels.

**Site** (covariate `site`). Without a shortcut each case is A, B or C with probability 1/3. With
`shortcut = P`, nodule-positive cases are site B with probability P and nodule-negative cases
with probability 1 − P; A and C share the rest equally. Each site applies a gamma curve
(clean = clipped intensity ^ gamma), then burns a marker of value 1.0 into a corner: a square
block of max(3, round(0.08 × size)) pixels, one pixel in from the corner, always outside the body.

| site | gamma | noise SD | marker corner | marker pattern |
|---|---|---|---|---|
{sites}

`clean` is that picture (gamma and marker included); `image` = clip(clean + Gaussian noise with the
site's SD, 0, 1).

**Hidden stratum** (`nodule_subtype`, role ignore): each nodule-positive case is `subtle` with
probability `hidden_stratum` (default 0), else `typical`; negatives are `none`.

{reports.RULES}"""


RULES: str = _rules()
