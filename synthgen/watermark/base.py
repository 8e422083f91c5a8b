"""What both watermark schemes share: the release id, the error type, the detection record."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from synthgen.errors import InputError

TAG = 0xC5A3  # synthgen's 16-bit tag: scheme 1 carries it, scheme 2 derives its key from it
ID_BITS = 32


class WatermarkError(InputError, ValueError):
    """An image or file that cannot carry or be checked for the mark (one readable line)."""


@dataclass(frozen=True)
class Detection:
    """Outcome of a check. `scheme`: which scheme's mark was found (None: none). Bit accuracy
    is over the bits the decision read: scheme 2, the coded bits against the decoded (blind)
    or expected release's code; scheme 1, the tag (blind) or all 48 bits (id given)."""

    detected: bool
    bit_accuracy: float
    release_id: int | None
    scheme: int | None = None


def check_release_id(release_id: object) -> int:
    """The id as an int, or WatermarkError unless it is an integer of 32 bits."""
    if isinstance(release_id, bool) or not isinstance(release_id, int | np.integer):
        raise WatermarkError(f"release id must be an integer, got {release_id!r}")
    if not 0 <= release_id < 2**ID_BITS:
        raise WatermarkError(f"release id must fit {ID_BITS} bits, got {release_id}")
    return int(release_id)


def release_id_from(text: str) -> int:
    """A stable 32-bit release id from a run's identity (first 4 bytes of its sha256)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")
