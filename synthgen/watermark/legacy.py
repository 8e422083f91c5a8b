"""Scheme 1 (until 2026-12): 48 bits (a synthgen tag + a release id) quantised into the block
brightness of the gray values. Kept so marks made before scheme 2 are still found, and as the
reference the benchmark measures scheme 2 against; new marks use `tile.py`.

Built on invisible-watermark (`imwatermark`): its DWT-DCT-SVD block routines quantise the top
singular value of each 4×4 block of the Haar approximation band (an 8×8 pixel block, aligned
with JPEG's grid, so the mark rides on block brightness that JPEG and resizing keep). The
library's own `encode`/`decode` cannot be used on scans: they embed in a colour channel (lost
when a gray image is saved as gray), refuse images under 256×256 and swap two wavelet bands on
reconstruction. Here the same block routines run on the single gray channel, the bands go back
in the right order, and the payload is repeated over every block and read back by majority.
It survives JPEG but not crops off the 8 px grid, rotation, resizing by much, or gamma.
"""

from __future__ import annotations

import cv2
import numpy as np
import pywt
from imwatermark.dwtDctSvd import EmbedDwtDctSvd

from synthgen.watermark.base import ID_BITS, TAG, Detection, check_release_id

SCHEME = 1
PAYLOAD_BITS = 48
TAG_BITS = 16
BLOCK = 4  # the library's block side in the approximation band, i.e. 8×8 pixels
BLOCK_PX = 2 * BLOCK
SCALE = 44.0  # quantisation step of a block's top singular value: ~44 dB PSNR (docs/watermark.md)
# Bits that must match: 15 of the 16 tag bits (blind) or 45 of 48 (given the release id). By
# the binomial tail an image without the mark passes with P = 17/2**16 = 0.026% (blind) or
# 7e-11 (given the id); docs/watermark.md has the measured rate.
DETECT_THRESHOLD = 15 / 16
EMBED_PASSES = 4  # marking again what clipping undid; one pass suffices unless pixels saturate


class _GrayBlocks(EmbedDwtDctSvd):
    """The library's block routines with a nearest-code quantiser.

    The library moves the singular value to the code of the right bit inside its current step,
    up to 3/4 of a step away; the nearest such code is at most 1/2 a step away: ~2 dB more PSNR
    at the same decoding margin (measured in docs/watermark.md).
    """

    def diffuse_dct_svd(self, block: np.ndarray, bit: int, scale: float) -> np.ndarray:
        u, s, v = np.linalg.svd(cv2.dct(block))
        offset = (0.25 + 0.5 * bit) * scale
        s[0] = max(round((s[0] - offset) / scale), 0) * scale + offset
        return cv2.idct(u @ np.diag(s) @ v)


def payload(release_id: int) -> np.ndarray:
    """The 48 bits (uint8 0/1) of a scheme-1 mark: TAG then the release id, both MSB first."""
    value = (TAG << ID_BITS) | check_release_id(release_id)
    return np.array([(value >> k) & 1 for k in range(PAYLOAD_BITS - 1, -1, -1)], dtype=np.uint8)


def fits(shape: tuple[int, ...]) -> bool:
    """Whether the 8×8 blocks of `shape` hold the 48-bit payload once."""
    return (shape[0] // BLOCK_PX) * (shape[1] // BLOCK_PX) >= PAYLOAD_BITS


def bands(view: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Haar DWT of the block-aligned part: approximation band and detail bands."""
    rows, cols = (n // BLOCK_PX * BLOCK_PX for n in view.shape)
    approx, details = pywt.dwt2(view[:rows, :cols].astype(np.float64), "haar")
    return approx, details


def merge(approx: np.ndarray, details: tuple[np.ndarray, ...]) -> np.ndarray:
    # pywt's (H, V, D) order: imwatermark passes (V, H, D), alone a 25-39 dB PSNR ceiling.
    return pywt.idwt2((approx, details), "haar")


def embed(image: np.ndarray, release_id: int) -> np.ndarray:
    """Mark a 2D uint8 gray image (that `fits`) with `payload(release_id)`; a marked copy.

    Rounding and clipping to 0..255 can undo a block's move where the image saturates (a
    burned-in marker, an enlarged noisy sample), so the copy is read back and marked again,
    from what clipping left, until every bit reads right or EMBED_PASSES run out."""
    bits = payload(release_id)
    out = image.copy()
    for _ in range(EMBED_PASSES):
        approx, details = bands(out)
        _GrayBlocks(list(bits), wmLen=PAYLOAD_BITS, block=BLOCK).encode_frame(approx, SCALE)
        marked = merge(approx, details)
        out[: marked.shape[0], : marked.shape[1]] = np.clip(np.round(marked), 0, 255)
        if (majority(votes(out)) == bits).all():
            break
    return out


def votes(view: np.ndarray, tally: list[list[int]] | None = None) -> list[list[int]]:
    """Append each block's read bit to its payload position (the library's decoder)."""
    approx, _ = bands(view)
    reader = EmbedDwtDctSvd(watermarks=[], wmLen=PAYLOAD_BITS, block=BLOCK)
    return reader.decode_frame(approx, SCALE, tally or [[] for _ in range(PAYLOAD_BITS)])


def majority(tally: list[list[int]]) -> np.ndarray:
    """Each payload position's majority vote; a tie reads 0."""
    return np.array([np.mean(v) > 0.5 for v in tally], dtype=np.uint8)


def decide(tally: list[list[int]], release_id: int | None) -> Detection:
    """Blind: the 16 tag bits decide and the id is read; given the id, all 48 bits decide."""
    bits = majority(tally)
    if release_id is None:
        accuracy = float(np.mean(bits[:TAG_BITS] == payload(0)[:TAG_BITS]))  # the tag, any id
    else:
        accuracy = float(np.mean(bits == payload(release_id)))
    detected = accuracy >= DETECT_THRESHOLD
    found = int("".join(map(str, bits[TAG_BITS:])), 2) if detected else None
    return Detection(detected, accuracy, found, SCHEME if detected else None)
