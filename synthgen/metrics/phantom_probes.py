"""Probes that judge whether chest2d phantom images (real or generated) honour their conditions.

The phantom's rules are known (synthgen.data.phantoms.chest2d), so each condition can be read
back from pixels alone: sex from the body's width, a nodule as a compact bright blob enclosed by
dark lung, "looks like a phantom" from the body/lung layout. Generated samples carry no masks,
so every rule here segments the image itself; read conditions only off images that pass
`phantom_like` (on noise the blob rule fires freely). A small CNN probe covers what rules cannot
(a learned sex/nodule reader, real-vs-synthetic separability).

Images are (N, 1, H, W) tensors in the model range [-1, 1] (-1 = background); the rules work in
display units u = (x + 1) / 2 in [0, 1]. Thresholds were measured on 2,000 real 32² phantoms
(min_nodule_px 1.5); sizes in pixels (smoothing, minimum blob area) are tuned for that scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn
from torchmetrics.functional.classification import binary_auroc

BODY_LEVEL = 0.2  # background is 0 + noise (SD <= 0.035); soft tissue is >= 0.32 at every site
MIDDLE_ROWS = (0.25, 0.75)  # body width is read over these fractions of the frame's height
LARGE_BLOB = 0.05  # of the frame: a body; the site markers cover < 1 %
BODY_AREA = (0.30, 0.80)  # of the frame; phantom bodies cover 0.51..0.65
STRAY_FOREGROUND = 0.03  # of the frame: above-background pixels allowed outside the body
RAGGED_OUTLINE = 0.05  # most of the body a 3x3 opening may remove (phantoms: < 0.01)
SMOOTH_SIGMA_PX = 0.5  # denoises before the lung/tissue cut without washing out 1.5 px nodules
DARK_LEVEL = 0.55  # lung/tissue cut, as a fraction of the way from lung to tissue median
MIN_CONTRAST = 0.08  # tissue minus lung median (display units) below which there are no lungs
LUNG_AREA = (0.05, 0.40)  # a lung blob's area as a fraction of the body's
NODULE_MIN_AREA_PX = 2  # per 32 px of frame side; smaller holes are noise
NODULE_MAX_AREA = 0.02  # of the frame: larger bright holes are not compact blobs


def _display(images: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) model-range tensor -> (N, H, W) float64 array in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, H, W), got {tuple(images.shape)}")
    x = images.detach().to("cpu", torch.float64).clamp(-1.0, 1.0)
    return ((x[:, 0] + 1.0) / 2.0).numpy()


def _filled_foreground(u: np.ndarray) -> np.ndarray:
    """Above-background pixels with enclosed holes (dark lungs) filled."""
    return ndi.binary_fill_holes(u > BODY_LEVEL)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected component labels of a mask and each label's area (index k - 1 for label k)."""
    labels, n = ndi.label(mask)
    return labels, np.bincount(labels.ravel(), minlength=n + 1)[1:]


def _blobs(mask: np.ndarray, min_area: float = 1) -> list[np.ndarray]:
    """Connected components of a mask with at least `min_area` pixels, largest first."""
    labels, areas = _components(mask)
    order = np.argsort(-areas, kind="stable")
    return [labels == k + 1 for k in order if areas[k] >= min_area]


def _otsu(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's cut: the threshold that maximises the between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(counts)[:-1]
    w1 = counts.sum() - w0
    m0 = np.cumsum(counts * centres)[:-1]
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (np.sum(counts * centres) - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


@dataclass(frozen=True)
class Segmentation:
    """One image split into body, dark lung fields and the brightness scale between them."""

    body: np.ndarray  # the largest filled above-background blob
    smooth: np.ndarray  # the image smoothed within the body only (no background bleed)
    lung_level: float
    tissue_level: float
    dark: np.ndarray  # body pixels below the lung/tissue cut
    lungs: list[np.ndarray]  # dark blobs of lung size, largest first

    def normalised(self, values: np.ndarray) -> np.ndarray:
        """Brightness on the image's own scale: 0 = lung median, 1 = tissue median."""
        return (values - self.lung_level) / (self.tissue_level - self.lung_level)


def segment(u: np.ndarray) -> Segmentation | None:
    """Body, lung/tissue levels (Otsu within the body) and lung blobs of one [0, 1] image;
    None when there is no body or no lung/tissue contrast."""
    bodies = _blobs(_filled_foreground(u))
    if not bodies:
        return None
    body = bodies[0]
    weight = ndi.gaussian_filter(body.astype(float), SMOOTH_SIGMA_PX)
    smooth = ndi.gaussian_filter(u * body, SMOOTH_SIGMA_PX) / np.maximum(weight, 1e-6)
    inside = smooth[body]
    cut = _otsu(inside)
    if not (inside < cut).any() or not (inside >= cut).any():
        return None
    lo, hi = float(np.median(inside[inside < cut])), float(np.median(inside[inside >= cut]))
    if hi - lo < MIN_CONTRAST:
        return None
    dark = body & (smooth < lo + DARK_LEVEL * (hi - lo))
    least, most = (share * body.sum() for share in LUNG_AREA)
    lungs = [blob for blob in _blobs(dark, least) if blob.sum() <= most]
    return Segmentation(body, smooth, lo, hi, dark, lungs)


def body_width(images: torch.Tensor) -> torch.Tensor:
    """(N,) body width as a fraction of the frame width: the longest run of filled
    above-background pixels in any row of the middle half of the frame (sex reads off it:
    phantom body width is 0.74 ± 0.04 for F, 0.86 ± 0.04 for M)."""
    u = _display(images)
    h, w = u.shape[1:]
    rows = slice(int(MIDDLE_ROWS[0] * h), int(np.ceil(MIDDLE_ROWS[1] * h)))
    widths = [max(_longest_run(r) for r in _filled_foreground(img)[rows]) / w for img in u]
    return torch.tensor(widths, dtype=torch.float32)


def _longest_run(row: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
    return int((edges[1::2] - edges[::2]).max(initial=0))


def _nodules(u: np.ndarray) -> tuple[int, float]:
    """Count of compact bright holes in the (hole-filled) lung fields and the blob score:
    the brightest such hole's peak, else the brightest lung pixel (normalised brightness)."""
    seg = segment(u)
    if seg is None or not seg.lungs:
        return 0, 0.0
    fields = np.logical_or.reduce([ndi.binary_fill_holes(lung) for lung in seg.lungs[:2]])
    brightness = seg.normalised(seg.smooth)
    labels, areas = _components(fields & ~seg.dark)
    min_area = NODULE_MIN_AREA_PX * max(1.0, np.sqrt(u.size) / 32.0)
    blobs = np.flatnonzero((areas >= min_area) & (areas <= NODULE_MAX_AREA * u.size)) + 1
    if blobs.size:
        return int(blobs.size), float(np.max(ndi.maximum(brightness, labels, blobs)))
    return 0, float(brightness[fields & seg.dark].max())


def nodule_count(images: torch.Tensor) -> torch.Tensor:
    """(N,) int64 number of nodule-like blobs: bright holes fully enclosed by dark lung, of at
    least NODULE_MIN_AREA_PX per 32 px of side and at most NODULE_MAX_AREA of the frame. Ribs
    cross the whole lung and effusions sit on its border, so neither forms an enclosed hole."""
    return torch.tensor([_nodules(img)[0] for img in _display(images)], dtype=torch.int64)


def nodule_rule_shares(images: torch.Tensor, nodule: torch.Tensor) -> dict[str, float]:
    """How often the disk rule agrees with each image's nodule label: the share of nodule=1
    images holding exactly one nodule and of nodule=0 images holding none (NaN where no image
    has that label; other label values, e.g. -1 for unconditioned, count in neither)."""
    counts = nodule_count(images)

    def share(hit: torch.Tensor, where: torch.Tensor) -> float:
        return float(hit[where].float().mean()) if bool(where.any()) else float("nan")

    return {
        "exactly_one_when_1": share(counts == 1, nodule == 1),
        "none_when_0": share(counts == 0, nodule == 0),
    }


def nodule_score(images: torch.Tensor) -> torch.Tensor:
    """(N,) continuous nodule evidence for AUROC; >= DARK_LEVEL exactly when nodule_count >= 1."""
    return torch.tensor([_nodules(img)[1] for img in _display(images)], dtype=torch.float32)


def _phantom_like(u: np.ndarray) -> bool:
    """One large body of plausible size with a smooth outline on a clean background, holding
    exactly two lung-sized dark blobs, one each side of the body's centre column."""
    foreground = _filled_foreground(u)
    large = _blobs(foreground, LARGE_BLOB * u.size)
    if len(large) != 1 or not BODY_AREA[0] <= large[0].mean() <= BODY_AREA[1]:
        return False
    if (foreground & ~large[0]).mean() > STRAY_FOREGROUND:
        return False
    smooth_outline = ndi.binary_opening(large[0], np.ones((3, 3), dtype=bool))
    if 1.0 - smooth_outline.sum() / large[0].sum() > RAGGED_OUTLINE:
        return False
    seg = segment(u)
    if seg is None or len(seg.lungs) != 2:
        return False
    midline = ndi.center_of_mass(seg.body)[1]
    columns = sorted(ndi.center_of_mass(lung)[1] for lung in seg.lungs)
    return columns[0] < midline < columns[1]


def phantom_like(images: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the image has the chest phantom's layout (see `_phantom_like`); a sanity gate
    for generated samples before reading their conditions."""
    return torch.tensor([_phantom_like(img) for img in _display(images)], dtype=torch.bool)


class ProbeNet(nn.Module):
    """Three conv blocks, then mean and max pooling (width-like and blob-like evidence)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 4 * width),
        )
        self.head = nn.Linear(8 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)).squeeze(1)


def train_probe(
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
) -> nn.Module:
    """A binary CNN classifier trained on CPU; the seed fixes init and batch order without
    touching the caller's global RNG state."""
    x = images.detach().to("cpu", torch.float32)
    y = targets.detach().to("cpu", torch.float32).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} targets")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = ProbeNet()
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    probe.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            optimiser.zero_grad()
            loss_fn(probe(x[idx]), y[idx]).backward()
            optimiser.step()
    return probe.eval()


@torch.no_grad()
def probe_scores(probe: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(N,) probabilities of the positive class."""
    probe.eval()
    x = images.detach().to("cpu", torch.float32)
    return torch.cat([torch.sigmoid(probe(chunk)) for chunk in x.split(batch_size)])


def auroc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` against binary `targets`."""
    return float(binary_auroc(scores.detach().float().cpu(), targets.detach().long().cpu()))


def real_vs_synthetic_auroc(
    real: torch.Tensor, synthetic: torch.Tensor, seed: int = 0, *, epochs: int = 8
) -> float:
    """Held-out AUROC of a probe trained to tell synthetic from real on half of each set;
    0.5 means indistinguishable, 1.0 trivially separable."""
    generator = torch.Generator().manual_seed(seed)
    halves = []
    for part in (real, synthetic):
        shuffled = part[torch.randperm(len(part), generator=generator)]
        halves.append((shuffled[: len(part) // 2], shuffled[len(part) // 2 :]))
    (real_fit, real_test), (syn_fit, syn_test) = halves

    def stack(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([a, b]), torch.cat([torch.zeros(len(a)), torch.ones(len(b))])

    probe = train_probe(*stack(real_fit, syn_fit), epochs=epochs, seed=seed)
    test_x, test_y = stack(real_test, syn_test)
    return auroc(probe_scores(probe, test_x), test_y)
