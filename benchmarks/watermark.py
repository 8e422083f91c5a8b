"""Watermark robustness: scheme 2 (the self-synchronising tile) against scheme 1 (the block mark
it replaced) in the same run, on phantoms and real scans, 8 and 16 bit.

Per source × size × bit depth and attack (each alone and in common pairs, WAVES-style): the
true-positive rate of blind detection at the fixed false-positive rate the detector is built
for, the rate with the exact release id, the same given the expected id (`--expect`), and the
bit accuracy. False positives: every unmarked image in the run (phantoms of several sizes and
every real scan pydicom, pydicom-data and nibabel ship), against the analytic bounds. Volumes:
resliced along the marked axis and cropped axially. Cost: embedding a 512² image, detection
under every attack.

    python benchmarks/watermark.py [--quick | --tiny] [--unmarked N] [--workers N] [--figure PNG]
"""

from __future__ import annotations

import argparse
import io
import logging
import time
import warnings
from collections.abc import Callable
from functools import cache
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from synthgen import watermark as wm
from synthgen.data.io import read_image
from synthgen.data.phantoms import brain3d, chest2d
from synthgen.data.progress import progress
from synthgen.pipeline import space
from synthgen.watermark import code, legacy

SOURCES = ("chest2d", "chest2d-32up", "CT_small", "MR2_UNCR", "RG3_UNCR")
CROP_SIDE = float(np.sqrt(0.8))  # a crop keeping 80 % of the area

Attack = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _float(x: np.ndarray) -> tuple[np.ndarray, float]:
    top = 65535.0 if x.dtype == np.uint16 else 255.0
    return x.astype(np.float32) / top, top


def _back(y: np.ndarray, top: float) -> np.ndarray:
    dtype = np.uint16 if top > 255 else np.uint8
    return np.clip(np.round(y * top), 0, top).astype(dtype)


def _pil(x: np.ndarray, change: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """A geometric change through Pillow in float mode, back in the input's dtype."""
    y, top = _float(x)
    return _back(np.asarray(change(Image.fromarray(y, mode="F"))), top)


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """Saved as an 8-bit JPEG (what exporting a 16-bit image to JPEG gives)."""
    eight = x if x.dtype == np.uint8 else np.round(x / 257.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(eight).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def resize(x: np.ndarray, factor: float) -> np.ndarray:
    h, w = x.shape
    size = (round(w * factor), round(h * factor))
    return _pil(x, lambda im: im.resize(size, Image.Resampling.BICUBIC))


def rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    return _pil(x, lambda im: im.rotate(degrees, Image.Resampling.BICUBIC))


def crop(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """80 % of the area at a random offset."""
    h, w = x.shape
    ch, cw = round(h * CROP_SIDE), round(w * CROP_SIDE)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return x[top : top + ch, left : left + cw]


def noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    y, top = _float(x)
    return _back(y + rng.normal(0.0, 3 / 255, y.shape), top)


def gamma(x: np.ndarray, g: float) -> np.ndarray:
    y, top = _float(x)
    return _back(y**g, top)


ATTACKS: dict[str, Attack] = {
    "none": lambda x, r: x,
    "jpeg50": lambda x, r: jpeg(x, 50),
    "jpeg75": lambda x, r: jpeg(x, 75),
    "resize0.5": lambda x, r: resize(x, 0.5),
    "resize2": lambda x, r: resize(x, 2.0),
    "crop80": crop,
    "rot+5": lambda x, r: rotate(x, 5.0),
    "rot-5": lambda x, r: rotate(x, -5.0),
    "noise3": noise,
    "gamma0.8": lambda x, r: gamma(x, 0.8),
    "gamma1.2": lambda x, r: gamma(x, 1.2),
    "resize0.75+jpeg75": lambda x, r: jpeg(resize(x, 0.75), 75),
    "crop80+jpeg75": lambda x, r: jpeg(crop(x, r), 75),
    "rot+5+jpeg75": lambda x, r: jpeg(rotate(x, 5.0), 75),
    "resize0.5+crop80": lambda x, r: crop(resize(x, 0.5), r),
    "gamma1.2+jpeg75": lambda x, r: jpeg(gamma(x, 1.2), 75),
}
GEOMETRIC = ("resize0.5", "resize2", "crop80", "rot+5", "rot-5", "resize0.5+crop80")


@cache
def scan(name: str) -> np.ndarray:
    """A shipped scan (pydicom or pydicom-data) as floats in [0, 1], windowed to its 0.5-99.5
    percentiles."""
    from pydicom.data import get_testdata_file

    pixels = read_image(Path(get_testdata_file(f"{name}.dcm", download=False))).array
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    return np.clip((pixels - lo) / (hi - lo), 0.0, 1.0)


def source_image(source: str, seed: int, size: int) -> np.ndarray:
    """Image `seed` of a source at `size`², floats in [0, 1]: phantoms drawn per seed, scans
    cropped at a seeded square (the whole of CT_small) and resized."""
    if source.startswith("chest2d"):
        render = 32 if source == "chest2d-32up" else size
        case = chest2d.sample(np.random.default_rng(seed), chest2d.ChestOptions(size=render))
        image = torch.from_numpy(case.image)[None, None].float()
        # as `sample --size` enlarges: whole-factor pixel repeats
        return space.resize(image, (size, size))[0, 0].numpy() if render != size else case.image
    pixels = scan(source)
    side = min(pixels.shape)
    if side > 256:  # a seeded square of 60-100 % of the short side
        rng = np.random.default_rng(seed)
        side = int(side * rng.uniform(0.6, 1.0))
        top = rng.integers(0, pixels.shape[0] - side + 1)
        left = rng.integers(0, pixels.shape[1] - side + 1)
        pixels = pixels[top : top + side, left : left + side]
    return cv2.resize(pixels.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


def quantise(image: np.ndarray, bits: int) -> np.ndarray:
    top = 65535 if bits == 16 else 255
    return np.round(np.clip(image, 0, 1) * top).astype(np.uint16 if bits == 16 else np.uint8)


def psnr(a: np.ndarray, b: np.ndarray, top: float) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(top**2 / max(mse, 1e-12)))


def detect(x: np.ndarray, release: int | None, scheme: int) -> wm.Detection:
    window = (0.0, 65535.0) if x.dtype == np.uint16 else (None, None)
    if scheme == 2:
        return wm.detect(x, *window, release_id=release)
    view = x if x.dtype == np.uint8 else np.round(x / 257.0).astype(np.uint8)
    return legacy.decide(legacy.votes(view), release)


def mark(x: np.ndarray, release: int, scheme: int) -> np.ndarray:
    if scheme == 2:
        return (
            wm.embed_array(x, 0.0, 65535.0, release)
            if x.dtype == np.uint16
            else wm.embed(x, release)
        )
    return legacy.embed(x, release)


def cell(task: tuple[str, int, int, int, int]) -> dict[str, float]:
    """One marked image under every attack: detected (blind, exact id, expected), bits, time."""
    source, size, bits, seed, scheme = task
    rng = np.random.default_rng(seed)
    release = wm.release_id_from(f"benchmark-{source}-{size}-{bits}-{seed}")
    image = quantise(source_image(source, seed, size), bits)
    marked = mark(image, release, scheme)
    out = {"psnr": psnr(image, marked, 65535.0 if bits == 16 else 255.0)}
    for name, attack in ATTACKS.items():
        attacked = attack(marked, rng)
        start = time.perf_counter()
        blind = detect(attacked, None, scheme)
        out[f"ms_{name}"] = 1000 * (time.perf_counter() - start)
        given = detect(attacked, release, scheme)
        out[f"tpr_{name}"] = float(blind.detected)
        out[f"exact_{name}"] = float(blind.release_id == release)
        out[f"expect_{name}"] = float(given.detected and given.release_id == release)
        out[f"acc_{name}"] = given.bit_accuracy
    return out


def real_scans() -> list[np.ndarray]:
    """Every 2D image or frame (each side >= the minimum) of the scans the installed packages
    ship, windowed to its 0.5-99.5 percentiles as 8 bits."""
    from nibabel.testing import data_path
    from pydicom.data import get_testdata_files

    logging.disable(logging.CRITICAL)
    paths = sorted(set(get_testdata_files("*"))) + sorted(map(str, Path(data_path).glob("*.nii*")))
    images = []
    for path in paths:
        try:
            array = read_image(Path(path)).array
        except Exception:  # files that are not images, or need a decoder not installed
            continue
        frames = array.reshape(-1, *array.shape[-2:]) if array.ndim == 3 else array[None]
        for frame in frames:
            if min(frame.shape) >= wm.min_size() and np.ptp(frame) > 0:
                lo, hi = np.percentile(frame, [0.5, 99.5])
                images.append(quantise((frame - lo) / max(hi - lo, 1e-6), 8))
    return images


def unmarked(task: tuple[int, int]) -> tuple[int, bool | None]:
    """(the scheme blind detection found, 0 for none; detected given an arbitrary id, or None:
    not checked) for unmarked phantom `k` (every fifth is also checked given an id)."""
    k, size = task
    image = quantise(source_image("chest2d" if k % 3 else "chest2d-32up", 10**6 + k, size), 8)
    return _false(image, k % 5 == 0)


def _false(image: np.ndarray, given: bool = True) -> tuple[int, bool | None]:
    expect = wm.detect(image, release_id=0x2EB0F37D).detected if given else None
    return wm.detect(image).scheme or 0, expect


def volume_cell(seed: int) -> dict[str, float]:
    """A 96³ brain phantom marked per axial slice, resliced and cropped along that axis."""
    case = brain3d.sample(np.random.default_rng(seed), brain3d.BrainOptions(size=96))
    volume = case.image.astype(np.float32)
    release = wm.release_id_from(f"volume-{seed}")
    marked = wm.embed_volume(volume, 0.0, 1.0, release)
    changes = {
        "none": marked,
        "reslice0.7": ndimage.zoom(marked, (1, 1, 0.7), order=1),
        "reslice1.6": ndimage.zoom(marked, (1, 1, 1.6), order=1),
        "axial_crop": marked[..., 30:60],
        "inplane0.75": ndimage.zoom(marked, (0.75, 0.75, 1), order=1),
    }
    return {
        name: float(wm.detect_volume(v, 0.0, 1.0, release_id=release).detected)
        for name, v in changes.items()
    }


def figure(path: Path) -> None:
    """Original, marked and their difference (×16 around mid-gray) of a 256² chest phantom."""
    image = quantise(source_image("chest2d", 0, 256), 8)
    marked = wm.embed(image, wm.release_id_from("figure"))
    difference = np.clip(128 + 16 * (marked.astype(np.int16) - image), 0, 255).astype(np.uint8)
    gap = np.full((256, 8), 255, np.uint8)
    Image.fromarray(np.hstack([image, gap, marked, gap, difference])).save(path)


def _init(list_size: int | None = None) -> None:
    """A worker: one thread each; `list_size` replaces the blind decoder's list (a lever)."""
    if list_size is not None:
        wm.LIST = list_size
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")


def table(title: str, rows: dict[tuple, dict[str, float]], prefix: str) -> None:
    names = list(ATTACKS)
    print(f"\n{title}")
    print(
        f"{'source':>14} {'size':>4} {'bit':>3} {'psnr':>6} "
        + " ".join(f"{n[:9]:>9}" for n in names)
    )
    for (source, size, bits, scheme), figures in rows.items():
        label = source if scheme == 2 else f"{source} (s1)"
        cells = " ".join(f"{figures[f'{prefix}_{n}']:>9.3f}" for n in names)
        print(f"{label:>14} {size:>4} {bits:>3} {figures['psnr']:>6.2f} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images: under 3 minutes")
    parser.add_argument("--tiny", action="store_true", help="smoke run: figures meaningless")
    parser.add_argument("--unmarked", type=int, help="unmarked phantoms [10,000; quick 300]")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--figure", type=Path, help="also write the difference figure (PNG)")
    parser.add_argument(
        "--list",
        type=int,
        help="blind decoding tries this many best messages for a matching CRC [the product's "
        "LIST]: a lever, measured without changing the product",
    )
    args = parser.parse_args()
    if args.list is not None and args.list < 1:
        parser.error("--list must be at least 1")
    if args.figure:
        figure(args.figure)
    start = time.perf_counter()
    if args.tiny:
        plan = {("chest2d", 256, 8): 1, ("CT_small", 128, 8): 1}
        references, n_unmarked, n_volumes, scans = 1, 4, 1, False
    elif args.quick:
        plan = {(s, z, 8): 6 for s in ("chest2d", "CT_small") for z in (128, 256)}
        plan[("CT_small", 256, 16)] = 4
        references, n_unmarked, n_volumes, scans = 6, 300, 2, False
    else:
        plan = {(s, 256, 8): 100 if s in ("chest2d", "CT_small", "RG3_UNCR") else 50
                for s in SOURCES}  # fmt: skip
        plan |= {(s, z, 8): 20 for s in SOURCES for z in (128, 512)}
        plan |= {(s, 256, 16): 20 for s in ("chest2d", "CT_small", "RG3_UNCR")}
        references, n_unmarked, n_volumes, scans = 30, 10_000, 10, True
    n_unmarked = args.unmarked if args.unmarked is not None else n_unmarked

    tasks = [(s, z, b, seed, 2) for (s, z, b), n in plan.items() for seed in range(n)]
    tasks += [(s, 256, 8, seed, 1) for s in ("chest2d", "CT_small") for seed in range(references)]
    sizes = (64, 128, 256, 512)
    with Pool(args.workers, initializer=_init, initargs=(args.list,)) as pool:
        figures = list(progress(pool.imap(cell, tasks), len(tasks), "marked images"))
        checks = pool.imap(unmarked, [(k, sizes[k % 4]) for k in range(n_unmarked)], chunksize=8)
        false = list(progress(checks, n_unmarked, "unmarked images"))
        real = real_scans() if scans else []
        false += pool.map(_false, real, chunksize=1)
        volumes = pool.map(volume_cell, range(n_volumes), chunksize=1)

    grouped: dict[tuple, list[dict[str, float]]] = {}
    for task, result in zip(tasks, figures, strict=True):
        grouped.setdefault((*task[:3], task[4]), []).append(result)
    rows = {
        key: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for key, rs in grouped.items()
    }
    detect_ms = max(r[f"ms_{a}"] for rs in grouped.values() for r in rs for a in ATTACKS)
    table("blind detection, true-positive rate (scheme 2 unless (s1))", rows, "tpr")
    table("blind detection with the exact release id", rows, "exact")
    table("given the expected id (--expect)", rows, "expect")
    table("bit accuracy over the coded bits (scheme 1: 48 bits), id given", rows, "acc")
    print("\nvolumes (96³ brain phantoms, marked per axial slice, id given):")
    for name in volumes[0]:
        print(f"  {name}: {np.mean([v[name] for v in volumes]):.3f}")

    blind_hits = sum(b > 0 for b, _ in false)
    by_scheme = ", ".join(f"scheme {k}: {sum(b == k for b, _ in false)}" for k in (2, 1))
    given = [g for _, g in false if g is not None]
    n_false = len(false)
    print(
        f"\nunmarked: {n_false} images ({n_unmarked} phantoms at {sizes}, {len(real)} real frames)"
    )

    embed_image = quantise(source_image("CT_small", 0, 512), 8)
    _init(args.list)
    times = []
    for k in range(20):
        t0 = time.perf_counter()
        wm.embed(embed_image, k)
        times.append(time.perf_counter() - t0)

    def worst(prefix: str, size: int, attacks=ATTACKS, bits: int = 8) -> float:
        return min(rows[key][f"{prefix}_{a}"] for key in rows for a in attacks
                   if key[1] == size and key[2] == bits and key[3] == 2)  # fmt: skip

    def survived(scheme: int) -> int:
        """Attacks every reference source at 256² 8-bit survives at TPR >= 0.99 blind."""
        both = [s for s in SOURCES if {(s, 256, 8, 1), (s, 256, 8, 2)} <= rows.keys()]
        keys = [(s, 256, 8, scheme) for s in both]
        return sum(all(rows[k][f"tpr_{a}"] >= 0.99 for k in keys) for a in ATTACKS)

    print(f"seconds: {time.perf_counter() - start:.0f}")
    print(f"tpr_min_256: {worst('tpr', 256):.3f}")
    if any(key[1] == 512 for key in rows):
        print(f"tpr_min_512: {worst('tpr', 512):.3f}")
    print(f"exact_id_min_256: {worst('exact', 256):.3f}")
    print(f"expect_min_256: {worst('expect', 256):.3f}")
    print(f"geometric_tpr_min_128: {worst('tpr', 128, GEOMETRIC):.3f}")
    print(f"geometric_expect_min_128: {worst('expect', 128, GEOMETRIC):.3f}")
    print(f"attacks_survived_256: {survived(2)} of {len(ATTACKS)} (scheme 1: {survived(1)})")
    print(f"attacks_survived_vs_scheme1: {survived(2) / max(survived(1), 1):.2f}")
    print(f"psnr_min: {min(r['psnr'] for key, r in rows.items() if key[3] == 2):.2f}")
    print(f"false_positive_blind: {blind_hits}/{n_false} ({by_scheme})")
    print(f"false_positive_expect: {sum(given)}/{len(given)}")
    blind = wm.BLIND_BUDGET * wm.LIST / 2**code.CRC_BITS + 17 / 2**16  # scheme 2 + scheme 1
    print(f"false_positive_bound_blind: {blind:.1e} (list of {wm.LIST})")
    print(f"false_positive_bound_expect: {wm.EXPECT_BUDGET + 7e-11:.1e}")
    print(f"embed_ms_512: {1000 * float(np.median(times)):.1f}")
    print(f"detect_ms_max: {detect_ms:.0f}")


if __name__ == "__main__":
    main()
