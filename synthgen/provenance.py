"""Per-sample provenance: what made a synthetic image, stored where the image travels.

A sample's record goes three places, so it survives whichever one a user keeps: the release
manifest row, the file's own metadata (PNG text chunks; the NIfTI header's 80-byte
`descrip`), and for volumes a JSON sidecar (NIfTI has no room for the whole record).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

GENERATOR = "synthgen"
DESCRIP_BYTES = 80  # NIfTI-1 header field size


@dataclass(frozen=True)
class Provenance:
    """One sample's origin: enough to regenerate it from the checkpoint and to trace it."""

    sample_id: str
    index: int
    seed: int
    checkpoint_sha256: str
    release_id: int | None
    conditions: dict[str, Any]

    @property
    def release_hex(self) -> str:
        return "" if self.release_id is None else f"{self.release_id:08x}"

    def png_text(self) -> dict[str, str]:
        """PNG tEXt chunks: short keys a viewer shows, the full record as JSON."""
        return {
            "synthetic": "true",
            "generator": GENERATOR,
            "release": self.release_hex,
            "synthgen": json.dumps(asdict(self), sort_keys=True, default=str),
        }

    def nifti_description(self) -> str:
        """The header's `descrip` (at most 80 ASCII bytes): synthetic flag, release, id."""
        text = f"synthetic {GENERATOR} release={self.release_hex or 'none'} id={self.sample_id}"
        return text[:DESCRIP_BYTES]

    def sidecar(self) -> str:
        return json.dumps({"synthetic": True, "generator": GENERATOR, **asdict(self)}, indent=2)


def read_png_provenance(text: dict[str, str]) -> dict[str, Any] | None:
    """The record written by `Provenance.png_text`, or None for a PNG synthgen did not write."""
    raw = text.get("synthgen")
    return None if raw is None else json.loads(raw)
