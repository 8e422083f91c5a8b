"""Images too big to decode safely or too small for a model (issue #19): one `error:` line,
exit 2, nothing written, the inputs untouched.

Bombs are built cheaply (a PNG of zeros, a .nii.gz of repeated gzip members, a DICOM whose
header lies) and must be refused from their headers, so `data check` stays small in memory.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import snapshot, synthgen_here
from pydicom.data import get_testdata_file

from synthgen.data.io import write_png

SCHEMA = (
    "columns:\n  id: {role: id}\n  image: {role: image}\n  nodule: {role: label, levels: [0, 1]}\n"
)
# VmHWM (this process image's peak RSS, in KiB), not ru_maxrss: Linux carries ru_maxrss across
# exec, so a child of a big pytest process would report the parent's peak.
PEAK_SCRIPT = """\
import atexit, re
def peak():
    status = open("/proc/self/status").read()
    print("peak-kib", re.search(r"VmHWM:\\s+(\\d+)", status).group(1))
atexit.register(peak)
from synthgen.cli import main
main()
"""
MAX_PEAK_KIB = 1 << 20  # Linux KiB: the CLI needs ~150 MB; decoding either real bomb, over 1 GB


def png_of_zeros(side: int) -> bytes:
    """An 8-bit gray PNG of side² zeros, compressed row by row (never held in memory)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    deflate, row = zlib.compressobj(6), bytes(side + 1)  # filter byte 0, then the pixels
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def nifti_gz_of_zeros(side: int) -> bytes:
    """A .nii.gz of side³ uint8 zeros: the header, then 1 MiB gzip members of zeros (a gzip
    file may hold several members; readers join them)."""
    header = nib.Nifti1Header()
    header.set_data_shape((side,) * 3)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    mebibyte = gzip.compress(bytes(1 << 20), mtime=0)
    return gzip.compress(header.binaryblock + bytes(4), mtime=0) + mebibyte * (side**3 >> 20)


def write_dataset(root: Path, files: dict[str, str]) -> None:
    """manifest.csv (id → image path) and its schema under `root`."""
    rows = "".join(f"{rid},{path},{i % 2}\n" for i, (rid, path) in enumerate(files.items()))
    (root / "manifest.csv").write_text("id,image,nodule\n" + rows)
    (root / "schema.yaml").write_text(SCHEMA)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PNG of 13000² (169 M pixels, ~170 KB: the issue's example), a .nii.gz of 1024³ (1.07 G
    voxels, 1 MB) and a DICOM whose header says 30000² over 8 KB of pixels: over the default
    limits (89 M pixels for 2D, 2^28 voxels for volumes)."""
    root = tmp_path_factory.mktemp("bombs")
    (root / "bomb.png").write_bytes(png_of_zeros(13000))
    (root / "bomb.nii.gz").write_bytes(nifti_gz_of_zeros(1024))
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    ds.Rows = ds.Columns = 30000
    ds.save_as(root / "bomb.dcm")
    write_dataset(root, {"png": "bomb.png", "nifti": "bomb.nii.gz", "dicom": "bomb.dcm"})
    return root


def one_error_line(stderr: str) -> str:
    """The single `error:` line, which must be the last one."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], stderr
    return lines[-1]


def test_bombs_are_refused_from_their_headers_in_little_memory(bombs: Path):
    before = snapshot(bombs)
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, "data", "check", "manifest.csv", "--quiet"],
        cwd=bombs,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "manifest.csv: 3 problem(s)" in one_error_line(result.stderr)
    problems = result.stderr.strip().splitlines()[:-1]
    for row, (rid, name) in enumerate([("png", "png"), ("nifti", "nii.gz"), ("dicom", "dcm")]):
        expected = f"manifest.csv row {row + 1} (id={rid}), column image, file bomb.{name}: "
        assert any(p.startswith(expected) for p in problems), result.stderr
    limits = ["89,478,485 pixels", "268,435,456", "89,478,485"]  # 2D, the volume, 2D
    assert all(f"over the limit of {n}" in p for p, n in zip(problems, limits, strict=True))
    assert all(p.endswith("set SYNTHGEN_MAX_VOXELS to raise it") for p in problems)
    assert "1024×1024×1024 = 1,073,741,824 voxels" in result.stderr
    peak_kib = int(result.stdout.split("peak-kib")[-1])
    assert peak_kib < MAX_PEAK_KIB, f"data check peaked at {peak_kib >> 10} MiB"
    assert snapshot(bombs) == before


def test_a_malformed_limit_is_one_error_line(bombs: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SYNTHGEN_MAX_VOXELS", "lots")
    result = synthgen_here("data", "check", str(bombs / "manifest.csv"), "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: SYNTHGEN_MAX_VOXELS='lots': expected a whole number of voxels above 0"
    ]


AE_SMALL = "autoencoder.channels=[8,16,16,16]", "autoencoder.norm_num_groups=8"
UNET_SMALL = (
    "denoiser.channels=[8,16,16,16]",
    "denoiser.attention_levels=[false,false,false,false]",
    "denoiser.norm_num_groups=8",
    "denoiser.num_head_channels=8",
)


@pytest.mark.parametrize(
    ("stage", "side", "overrides", "reason"),
    [
        pytest.param(
            "ae",
            12,
            AE_SMALL,
            "image is 12×12; the autoencoder downsamples by 8, so those sides must be "
            "multiples of 8",
            id="autoencoder",
        ),
        pytest.param(
            "ldm",
            12,
            UNET_SMALL,
            "image is 12×12; the denoiser downsamples by 8, so those sides must be multiples of 8",
            id="denoiser",
        ),
        pytest.param(
            "inpaint",
            16,
            (*UNET_SMALL, "resolution=20"),
            "image is 16×16 (20×20 where the denoiser sees it); the denoiser downsamples by 8, "
            "so those sides must be multiples of 8",
            id="denoiser-resized",
        ),
        pytest.param(
            "ae",
            4,
            (),
            "image is 4×4; no synthgen model takes sides under 8 pixels",
            id="under-any-model",
        ),
    ],
)
def test_training_refuses_images_the_model_cannot_take(
    tmp_path: Path, stage: str, side: int, overrides: tuple[str, ...], reason: str
):
    """Refused before training starts (no run folder), naming the first training row."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        write_png(data / f"i{i}.png", np.full((side, side), 40 * i, np.uint8))
    write_dataset(data, {f"r{i}": f"i{i}.png" for i in range(4)})
    (tmp_path / "run.yaml").write_text("train: {steps: 1, batch_size: 2}\n")
    before = snapshot(tmp_path)
    result = synthgen_here(
        "train",
        stage,
        "--config",
        str(tmp_path / "run.yaml"),
        f"data.manifest={data / 'manifest.csv'}",
        f"out={tmp_path / 'run'}",
        *overrides,
        "--quiet",
    )
    assert result.returncode == 2, result.stderr
    where = "manifest.csv row 2 (id=r1), column image, file i1.png"  # row 1 is validation
    assert one_error_line(result.stderr) == f"error: {where}: {reason}"
    assert not (tmp_path / "run").exists()
    assert snapshot(tmp_path) == before
