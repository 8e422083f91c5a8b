"""Watermark quality and robustness, against invisible-watermark's stock method in the same run.

Sources: chest2d phantoms rendered at each size, chest2d rendered at 32² and enlarged the way
`sample --size` enlarges (each pixel repeated: what the demo model's 32² samples look like
when exported larger), and two real scans shipped with
pydicom (CT_small, MR_small) windowed to 8 bits and resized. For each size: PSNR, bit accuracy
over the 48 bits against the true payload, and the blind detection rate (detected with the
right release id) with no attack, after JPEG 90/75/50 (Pillow) and after resizing ×0.5 and back
(bicubic). The false-positive rate is measured on unmarked 256² phantoms. The reference rows
run at 256²: the library's own `encode`/`decode` ('dwtDct', the method the issue names), kept as
colour and saved as gray; the library's block quantiser inside synthgen's wrapper; and the
wrapper around the library's EmbedMaxDct routines.

    python benchmarks/watermark.py [--quick | --tiny]
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from unittest import mock

import cv2
import numpy as np
import torch
from imwatermark import WatermarkDecoder, WatermarkEncoder
from imwatermark.dwtDctSvd import EmbedDwtDctSvd
from imwatermark.maxDct import EmbedMaxDct
from PIL import Image

from synthgen import watermark as wm
from synthgen.data.phantoms import chest2d
from synthgen.pipeline import space

SIZES = (64, 128, 256)
SWEEP = (56, 64, 96, 128, 160, 192, 256)  # JPEG 75 detection: the smallest reliable size
SOURCES = ("chest2d", "chest2d-32up", "CT_small", "MR_small")
MAXDCT_SCALE = 36.0  # the library's default for its colour channels

Attack = Callable[[np.ndarray], np.ndarray]
Reader = Callable[[np.ndarray, int], tuple[float, bool]]


def _pil(image: np.ndarray) -> Image.Image:
    """Gray, or BGR (OpenCV's order, as the stock method returns it) as RGB."""
    return Image.fromarray(image if image.ndim == 2 else image[..., ::-1])


def _array(img: Image.Image, like: np.ndarray) -> np.ndarray:
    return np.asarray(img.convert("L")) if like.ndim == 2 else np.asarray(img)[..., ::-1]


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    _pil(image).save(buf, format="JPEG", quality=quality)
    return _array(Image.open(io.BytesIO(buf.getvalue())), image)


def half_and_back(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    small = _pil(image).resize((w // 2, h // 2), Image.Resampling.BICUBIC)
    return _array(small.resize((w, h), Image.Resampling.BICUBIC), image)


ATTACKS: dict[str, Attack] = {
    "none": lambda x: x,
    "jpeg90": lambda x: jpeg(x, 90),
    "jpeg75": lambda x: jpeg(x, 75),
    "jpeg50": lambda x: jpeg(x, 50),
    "resize": half_and_back,
}


def resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def scan(name: str) -> np.ndarray:
    """A pydicom test scan windowed to its min/max as 8 bits."""
    import pydicom
    from pydicom.data import get_testdata_file

    pixels = pydicom.dcmread(get_testdata_file(f"{name}.dcm")).pixel_array.astype(np.float64)
    scaled = (pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255
    return np.round(scaled).astype(np.uint8)


def source_image(source: str, seed: int, size: int) -> np.ndarray:
    """Image `seed` of a source at `size`² (the two scans are the same for every seed)."""
    if source.startswith("chest2d"):
        render = 32 if source == "chest2d-32up" else size
        case = chest2d.sample(np.random.default_rng(seed), chest2d.ChestOptions(size=render))
        if render != size:  # as `sample --size` enlarges: whole-factor pixel repeats
            grown = space.resize(torch.from_numpy(case.image)[None, None].float(), (size, size))
            return np.round(grown[0, 0].numpy() * 255).astype(np.uint8)
        return np.round(case.image * 255).astype(np.uint8)
    return resize(scan(source), size)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def read_bits(bits: np.ndarray, release: int) -> tuple[float, bool]:
    """(48-bit accuracy against the truth, blind detection with the right id) for read bits."""
    truth = wm.payload(release)
    blind = np.mean(bits[: wm.TAG_BITS] == truth[: wm.TAG_BITS]) >= wm.DETECT_THRESHOLD
    return float(np.mean(bits == truth)), bool(blind and np.array_equal(bits, truth))


def synthgen_read(image: np.ndarray, release: int) -> tuple[float, bool]:
    return wm.detect(image, release_id=release).bit_accuracy, wm.detect(image).release_id == release


def maxdct_embed(image: np.ndarray, release: int) -> np.ndarray:
    """synthgen's gray wrapper around the library's EmbedMaxDct frame routines instead."""
    approx, details = wm._bands(image)
    blocks = EmbedMaxDct(list(wm.payload(release)), wmLen=wm.PAYLOAD_BITS, block=wm.BLOCK)
    blocks.encode_frame(approx, MAXDCT_SCALE)
    marked = wm._merge(approx, details)
    out = image.copy()
    out[: marked.shape[0], : marked.shape[1]] = np.clip(np.round(marked), 0, 255)
    return out


def maxdct_read(image: np.ndarray, release: int) -> tuple[float, bool]:
    approx, _ = wm._bands(image)
    reader = EmbedMaxDct([], wmLen=wm.PAYLOAD_BITS, block=wm.BLOCK)
    votes = reader.decode_frame(approx, MAXDCT_SCALE, [[] for _ in range(wm.PAYLOAD_BITS)])
    return read_bits(np.array([np.mean(v) > 0.5 for v in votes], dtype=np.uint8), release)


def stock_embed(image: np.ndarray, release: int, keep_colour: bool) -> np.ndarray:
    """The library's encode ('dwtDct') on the gray image as BGR; returned as saved (BGR/gray)."""
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", list(wm.payload(release)))
    bgr = encoder.encode(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), "dwtDct")
    return bgr if keep_colour else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


def stock_read(image: np.ndarray, release: int) -> tuple[float, bool]:
    bgr = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    bits = WatermarkDecoder("bits", wm.PAYLOAD_BITS).decode(bgr, "dwtDct")
    return read_bits(np.asarray(bits, dtype=np.uint8), release)


def measure(
    images: list[np.ndarray],
    embed: Callable[[np.ndarray, int], np.ndarray],
    read: Reader,
    attacks: dict[str, Attack],
) -> dict[str, float]:
    """Mean PSNR and, per attack, mean bit accuracy and detection rate over `images`."""
    rows: dict[str, list[float]] = {"psnr": []}
    for k, image in enumerate(images):
        release = wm.release_id_from(f"benchmark-{k}")
        marked = embed(image, release)
        reference = image if marked.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        rows["psnr"].append(psnr(reference, marked))
        for name, attack in attacks.items():
            accuracy, found = read(attack(marked), release)
            rows.setdefault(f"acc_{name}", []).append(accuracy)
            rows.setdefault(f"det_{name}", []).append(float(found))
    return {name: float(np.mean(values)) for name, values in rows.items()}


def print_table(title: str, rows: list[tuple[str, int, int, dict[str, float]]], keys: list[str]):
    print(f"\n{title}")
    print(f"{'source':>22} {'size':>5} {'n':>4} " + " ".join(f"{k:>8}" for k in keys))
    for source, size, n, figures in rows:
        cells = " ".join(f"{figures[k]:>8.3f}" if k in figures else f"{'-':>8}" for k in keys)
        print(f"{source:>22} {size:>5} {n:>4} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 images per cell, not 100")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run for the test suite: seconds, figures meaningless",
    )
    args = parser.parse_args()
    cv2.setNumThreads(1)
    n, n_unmarked = (1, 2) if args.tiny else (20, 50) if args.quick else (100, 200)
    start = time.perf_counter()

    results: dict[tuple[str, int], dict[str, float]] = {}
    for source in SOURCES:
        for size in sorted(set(SIZES) | set(SWEEP)):
            images = [source_image(source, seed, size) for seed in range(n)]
            attacks = ATTACKS if size in SIZES else {"jpeg75": ATTACKS["jpeg75"]}
            results[source, size] = measure(images, wm.embed, synthgen_read, attacks)

    at256 = [source_image("chest2d", seed, 256) for seed in range(n)]
    library_quantiser = mock.patch.object(
        wm._GrayBlocks, "diffuse_dct_svd", EmbedDwtDctSvd.diffuse_dct_svd
    )
    with library_quantiser:
        library_rows = measure(at256, wm.embed, synthgen_read, ATTACKS)
    references = [
        (
            "stock dwtDct, colour",
            measure(at256, lambda x, r: stock_embed(x, r, True), stock_read, ATTACKS),
        ),
        (
            "stock dwtDct, as gray",
            measure(at256, lambda x, r: stock_embed(x, r, False), stock_read, ATTACKS),
        ),
        ("library quantiser", library_rows),
        ("maxDct wrapper", measure(at256, maxdct_embed, maxdct_read, ATTACKS)),
    ]

    unmarked = [
        source_image("chest2d" if k % 2 else "chest2d-32up", 10_000 + k, 256)
        for k in range(n_unmarked)
    ]
    blind = [wm.detect(image) for image in unmarked]
    false_hits = sum(found.detected for found in blind)

    rows = [(s, z, n, results[s, z]) for s in SOURCES for z in SIZES]
    rows += [(name, 256, n, figures) for name, figures in references]
    attacks = list(ATTACKS)
    print_table(
        "PSNR (dB) and bit accuracy over 48 bits", rows, ["psnr"] + [f"acc_{a}" for a in attacks]
    )
    print_table("detected blind with the right release id", rows, [f"det_{a}" for a in attacks])
    sweep = [(s, z, n, results[s, z]) for s in SOURCES for z in SWEEP]
    print_table("detected after JPEG 75, by export size", sweep, ["psnr", "det_jpeg75"])

    for source in SOURCES:
        reliable = [
            z for z in SWEEP if all(results[source, y]["det_jpeg75"] == 1 for y in SWEEP if y >= z)
        ]
        print(f"min_size_jpeg75_{source}: {reliable[0] if reliable else 'none'}")
    ours, stock = results["chest2d", 256], references[1][1]
    print(f"acc_jpeg75_vs_stock_as_gray_256: {ours['acc_jpeg75'] / stock['acc_jpeg75']:.2f}")
    print(f"psnr_vs_library_quantiser_256: {ours['psnr'] - library_rows['psnr']:+.2f} dB")
    print(f"unmarked_max_tag_accuracy_256: {max(found.bit_accuracy for found in blind):.4f}")
    print(f"false_positive_expected: {17 / 2**16:.5f}")
    print(f"seconds: {time.perf_counter() - start:.0f}")
    print(f"psnr_256: {ours['psnr']:.2f}")
    print(f"detect_jpeg75_256: {ours['det_jpeg75']:.3f}")
    print(f"false_positive_256: {false_hits / n_unmarked:.4f}")


if __name__ == "__main__":
    main()
