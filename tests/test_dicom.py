"""DICOM read as a radiology viewer shows it (#22): MONOCHROME1, pixel spacing, compressed
transfer syntaxes. Real files only: pydicom's test data and the pydicom-data dev extra."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import shipped_dicom, synthgen
from nibabel.testing import data_path as nibabel_data

from synthgen.data.intensity import window_for
from synthgen.data.io import read_image
from synthgen.data.schema import IntensityPolicy
from synthgen.edit.stored import read_stored
from synthgen.errors import InputError


def other_monochrome(source: Path, out: Path) -> Path:
    """`source` stored inverted under the other MONOCHROME interpretation: the same picture
    for a viewer, the way a second vendor could have exported it."""
    ds = pydicom.dcmread(source)
    stored = ds.pixel_array
    constant = -1 if int(ds.PixelRepresentation) else (1 << int(ds.BitsStored)) - 1
    ds.PixelData = (constant - stored.astype(np.int64)).astype(stored.dtype).tobytes()
    if "WindowCenter" in ds:  # the window a viewer opens it with, mirrored as the values:
        # DICOM's LINEAR window sits at c - 0.5, so the same picture needs K + 1 - c
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        centers = ds.WindowCenter if ds["WindowCenter"].VM > 1 else [ds.WindowCenter]
        mirrored = [slope * constant + 2 * intercept + 1 - float(c) for c in centers]
        ds.WindowCenter = mirrored if len(mirrored) > 1 else mirrored[0]
    flipped = {"MONOCHROME1": "MONOCHROME2", "MONOCHROME2": "MONOCHROME1"}
    ds.PhotometricInterpretation = flipped[ds.PhotometricInterpretation]
    ds.save_as(out)
    return out


@pytest.mark.parametrize(
    "name",
    [
        "RG3_UNCI.dcm",  # a CR radiograph stored MONOCHROME1 (unsigned, 10 bits)
        "CT_small.dcm",  # signed, with a rescale intercept
        "MR_small.dcm",
    ],
)
def test_monochrome1_reads_like_its_monochrome2_inversion(tmp_path, name):
    source = shipped_dicom(name)
    copy = other_monochrome(source, tmp_path / "inverted.dcm")
    original, inverted = read_image(source), read_image(copy)
    np.testing.assert_array_equal(original.array, inverted.array)
    assert original.window == inverted.window  # and so is the window it opens with
    ds = pydicom.dcmread(source)
    if ds.PhotometricInterpretation == "MONOCHROME2":  # read as the file stores it
        np.testing.assert_array_equal(
            original.array, pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
        )


def test_the_editor_decodes_monochrome1_as_the_reader_and_stores_it_back(tmp_path):
    path = other_monochrome(shipped_dicom("CT_small.dcm"), tmp_path / "m1.dcm")
    stored = read_stored(path)
    np.testing.assert_array_equal(stored.to_stored(stored.decoded), stored.stored)
    assert stored.voi is None  # CT_small has no window; RG3's is checked below
    radiograph = read_stored(shipped_dicom("RG3_UNCI.dcm"))
    assert radiograph.voi == read_image(shipped_dicom("RG3_UNCI.dcm")).window is not None
    low, high = -100.0, 300.0  # a window in decoded values holds the same pixels in stored ones
    a, b = stored.window_stored((low, high))
    inside = (stored.decoded >= low) & (stored.decoded <= high)
    np.testing.assert_array_equal(inside, (stored.stored >= a) & (stored.stored <= b))


def with_tags(source: Path, out: Path, **tags: object) -> Path:
    """A copy of `source` with tags set (None: removed)."""
    ds = pydicom.dcmread(source)
    for name, value in tags.items():
        if value is None:
            if name in ds:
                delattr(ds, name)
        else:
            setattr(ds, name, value)
    ds.save_as(out)
    return out


def test_pixel_spacing_of_zero_or_none_is_unknown_and_a_radiograph_falls_back(tmp_path):
    zero = read_image(shipped_dicom("RG1_UNCI.dcm"))  # CR with PixelSpacing 0\0
    missing = read_image(shipped_dicom("RG3_UNCI.dcm"))  # CR without PixelSpacing
    assert not zero.spacing_known and not missing.spacing_known
    imager = with_tags(shipped_dicom("RG3_UNCI.dcm"), tmp_path / "cr.dcm",
                       ImagerPixelSpacing=[0.139, 0.143])  # fmt: skip
    found = read_image(imager)
    assert found.spacing_known and found.spacing == pytest.approx((0.139, 0.143))
    ct = with_tags(shipped_dicom("CT_small.dcm"), tmp_path / "ct.dcm", PixelSpacing=None,
                   ImagerPixelSpacing=[0.5, 0.5])  # fmt: skip
    assert not read_image(ct).spacing_known  # a detector spacing means nothing for a CT
    assert read_image(shipped_dicom("CT_small.dcm")).spacing == pytest.approx((0.661468,) * 2)


def test_data_check_notes_an_unknown_spacing_and_compares_the_rest(tmp_path):
    files = {
        "a": with_tags(shipped_dicom("MR_small.dcm"), tmp_path / "a.dcm", PixelSpacing=None),
        "b": with_tags(shipped_dicom("MR_small.dcm"), tmp_path / "b.dcm"),
        "c": with_tags(
            shipped_dicom("MR_small.dcm"), tmp_path / "c.dcm", PixelSpacing=[0.5, 0.5]
        ),  # fmt: skip
    }
    rows = "".join(f"{k},{v}\n" for k, v in files.items())
    (tmp_path / "manifest.csv").write_text("id,image\n" + rows)
    (tmp_path / "schema.yaml").write_text("columns:\n  id: {role: id}\n  image: {role: image}\n")
    result = synthgen(tmp_path, "data", "check", "manifest.csv", "--quiet")
    assert result.returncode == 2, result.stderr
    assert "pixel spacing unknown" in result.stdout and "a.dcm" in result.stdout
    *problems, fix, summary = result.stderr.strip().splitlines()
    assert len(problems) == 1 and "c.dcm" in problems[0] and "spacing" in problems[0], problems
    assert fix.endswith(f"--out {tmp_path}-prepared --size 64") and summary.startswith("error:")


@pytest.mark.parametrize(
    ("compressed", "plain"),
    [
        ("693_J2KR.dcm", "693_UNCR.dcm"),  # JPEG 2000 lossless: Pillow
        ("693_J2KI.dcm", "693_UNCI.dcm"),  # JPEG 2000 lossy, its twin stored as decoded
        ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE lossless: pydicom
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless: python-gdcm
    ],
)
def test_lossless_compressed_files_read_as_their_uncompressed_twins(compressed, plain):
    np.testing.assert_array_equal(
        read_image(shipped_dicom(compressed)).array, read_image(shipped_dicom(plain)).array
    )


def test_jpeg_lossless_decodes_through_gdcm(tmp_path):
    """No lossless-JPEG file ships with its uncompressed twin: a real MR slice is compressed
    (process 14) by GDCM here, then read back exactly; a shipped one (NM) decodes too."""
    import gdcm

    source = shipped_dicom("MR_small.dcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(tmp_path / "ll.dcm"))
    assert writer.Write()
    syntax = pydicom.dcmread(tmp_path / "ll.dcm").file_meta.TransferSyntaxUID
    assert syntax == pydicom.uid.JPEGLosslessSV1
    np.testing.assert_array_equal(read_image(tmp_path / "ll.dcm").array, read_image(source).array)
    shipped = read_image(shipped_dicom("JPEG-LL.dcm"))
    assert shipped.array.shape == (1024, 256) and np.ptp(shipped.array) > 0


def jpeg_baseline(source: Path, out: Path) -> Path:
    """A real DICOM file stored again as JPEG baseline (8 bit, Pillow, quality 95): no
    grayscale baseline file ships. Wider stored values are scaled to 8 bits first."""
    from PIL import Image as PILImage
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array
    if pixels.dtype != np.uint8:
        pixels = np.rint(255 * (pixels - pixels.min()) / np.ptp(pixels)).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        for tag in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
            ds.pop(tag, None)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(out)
    return out


def test_jpeg_baseline_decodes_close_to_its_source(tmp_path):
    """JPEG baseline, made here from a real 8-bit ultrasound frame, decoded back through
    pydicom close to, not equal to, the frame."""
    source = shipped_dicom("JPGLosslessP14SV1_1s_1f_8b.dcm")
    baseline = jpeg_baseline(source, tmp_path / "baseline.dcm")
    lossy, exact = read_image(baseline).array, read_image(source).array
    assert lossy.shape == exact.shape and not np.array_equal(lossy, exact)
    assert np.corrcoef(lossy.ravel(), exact.ravel())[0, 1] > 0.99


def test_the_dicom_intensity_policy_uses_each_file_s_own_window():
    policy = IntensityPolicy(mode="dicom")
    ct = read_image(shipped_dicom("693_UNCI.dcm"))  # WindowCenter 40, WindowWidth 100 (HU)
    assert ct.window == (-10.0, 89.0)  # DICOM's LINEAR: c - 0.5 ± (w - 1) / 2
    assert window_for(ct.array, policy, ct.window) == ct.window
    radiograph = read_image(shipped_dicom("RG3_UNCI.dcm"))  # MONOCHROME1, 10 bits: 550 / 1024
    assert radiograph.window == (1023 - 1061.0, 1023 - 38.0)  # mirrored with the values
    lut = read_image(shipped_dicom("vlut_04.dcm"))  # a VOI LUT Sequence, no centre/width
    descriptor = pydicom.dcmread(shipped_dicom("vlut_04.dcm")).VOILUTSequence[0].LUTDescriptor
    assert lut.window == (descriptor[1], descriptor[1] + descriptor[0] - 1)
    plain = read_image(shipped_dicom("JPEG2000_UNC.dcm"))  # no window: percentiles, as before
    assert plain.window is None
    assert window_for(plain.array, policy, None) == window_for(plain.array, IntensityPolicy())


def oblique_nifti(out: Path) -> Path:
    """nibabel's real MR volume (int16; its affine LAS, determinant < 0) turned oblique: rotated
    25° about x and 10° about z."""
    img = nib.load(Path(nibabel_data) / "anatomical.nii")
    a, b = np.radians(25), np.radians(10)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    rotation = np.eye(4)
    rotation[:3, :3] = rz @ rx
    data = np.asarray(img.dataobj).astype(np.int16)
    nib.save(nib.Nifti1Image(data, rotation @ img.affine), out)
    return out


def as_series(nifti: Path, folder: Path, seed: int) -> list[Path]:
    """The volume as one DICOM slice per file along its first axis, under shuffled file names
    (what a scanner's export folder holds), each slice in a copy of a real MR header: rows run
    along the volume's second axis, columns along its third, positions in LPS."""
    img = nib.load(nifti)
    data, affine = np.asarray(img.dataobj).astype(np.int16), img.affine
    to_lps = np.diag([-1.0, -1.0, 1.0])
    row_dir, col_dir = to_lps @ affine[:3, 2], to_lps @ affine[:3, 1]
    spacing = [np.linalg.norm(col_dir), np.linalg.norm(row_dir)]
    cosines = [*(row_dir / spacing[1]), *(col_dir / spacing[0])]
    template = pydicom.dcmread(shipped_dicom("MR_small.dcm"))
    series = pydicom.uid.generate_uid()
    names = np.random.default_rng(seed).permutation(data.shape[0])
    folder.mkdir()
    written = []
    for s in range(data.shape[0]):
        ds = copy.deepcopy(template)
        ds.Rows, ds.Columns = data.shape[1:]
        ds.PixelData = np.ascontiguousarray(data[s]).tobytes()
        ds.ImageOrientationPatient = [round(float(v), 10) for v in cosines]
        ds.ImagePositionPatient = [round(float(v), 6) for v in to_lps @ (affine @ [s, 0, 0, 1])[:3]]
        ds.PixelSpacing = [round(float(v), 10) for v in spacing]
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series, pydicom.uid.generate_uid()
        ds.save_as(folder / f"IM{names[s]:04d}")
        written.append(folder / f"IM{names[s]:04d}")
    return written


def test_a_series_folder_reads_as_the_nifti_it_came_from(tmp_path):
    nifti = oblique_nifti(tmp_path / "mr.nii")
    as_series(nifti, tmp_path / "series", seed=3)
    volume, series = read_image(nifti), read_image(tmp_path / "series")
    np.testing.assert_array_equal(series.array, volume.array)
    np.testing.assert_allclose(series.affine, volume.affine, atol=1e-5)
    np.testing.assert_allclose(series.spacing, volume.spacing, atol=1e-6)
    (tmp_path / "manifest.csv").write_text("id,image\nmr1,series\nmr2,mr.nii\n")  # a folder cell
    (tmp_path / "schema.yaml").write_text("columns:\n  id: {role: id}\n  image: {role: image}\n")
    checked = synthgen(tmp_path, "data", "check", "manifest.csv", "--quiet")
    assert checked.returncode == 0, checked.stderr
    assert "2 rows, shape (33, 41, 25)" in checked.stdout


def test_a_gap_or_a_second_series_in_the_folder_is_refused_naming_the_file(tmp_path):
    nifti = oblique_nifti(tmp_path / "mr.nii")
    gap = as_series(nifti, tmp_path / "gap", seed=4)
    gap[10].unlink()  # slice 10 missing: slice 11 sits two steps from slice 9
    with pytest.raises(InputError, match=rf"{gap[11].name}: 4 mm from {gap[9].name}"):
        read_image(tmp_path / "gap")
    mixed = as_series(nifti, tmp_path / "mixed", seed=5)
    other = pydicom.dcmread(mixed[7])
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.save_as(mixed[7])
    with pytest.raises(InputError, match=rf"{mixed[7].name}: SeriesInstanceUID differs"):
        read_image(tmp_path / "mixed")


def test_a_multiframe_volume_gets_its_affine_from_position_and_orientation():
    path = shipped_dicom("rtdose.dcm")  # IOP identity, 15 frames 5 mm apart, 10 mm pixels
    ds = pydicom.dcmread(path)
    image = read_image(path)
    origin = np.array([float(v) for v in ds.ImagePositionPatient])
    expected = np.array(
        [[0, 0, -10, -origin[0]], [0, -10, 0, -origin[1]], [5, 0, 0, origin[2]], [0, 0, 0, 1]]
    )
    np.testing.assert_allclose(image.affine, expected)
    assert image.spacing == pytest.approx((5.0, 10.0, 10.0))


def test_an_enhanced_multiframe_volume_takes_spacing_and_positions_from_its_functional_groups():
    """eCT_Supplemental (enhanced CT): no top-level PixelSpacing or orientation; the shared
    groups hold spacing and orientation, each frame its own position."""
    path = shipped_dicom("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    first, last = (
        np.array([float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient])
        for f in ds.PerFrameFunctionalGroupsSequence
    )
    assert image.spacing_known
    assert image.spacing == pytest.approx((np.linalg.norm(last - first), 0.388672, 0.388672))
    to_ras = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(image.affine[:3, 3], to_ras @ first)  # the first frame's corner
    np.testing.assert_allclose(image.affine[:3, 0], to_ras @ (last - first))
    # IOP (-1, 0, 0, 0, 1, 0): columns run to patient right (RAS +x), rows to anterior (RAS -y)
    np.testing.assert_allclose(image.affine[:3, 2], [0.388672, 0, 0])
    np.testing.assert_allclose(image.affine[:3, 1], [0, -0.388672, 0])
    # its values in HU through the shared PixelValueTransformationSequence (slope 1, intercept
    # -1024), which pydicom's modality LUT does not read; its window from the shared VOI group
    np.testing.assert_array_equal(image.array, ds.pixel_array.astype(np.float32) - 1024.0)
    voi = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    center, width = float(voi.WindowCenter), float(voi.WindowWidth)
    assert image.window == (center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2)


@pytest.mark.parametrize(
    "name", ["eCT_Supplemental.dcm", "CT_small.dcm", "RG3_UNCI.dcm", "emri_small.dcm"]
)
def test_the_editor_maps_the_readers_values_back_to_the_stored_pixels(name):
    """The editor blends in the reader's values and writes back through its own inverse map:
    that inverse must undo the reader exactly (an enhanced CT's shared rescale too), or every
    protected pixel would move."""
    stored = read_stored(shipped_dicom(name))
    np.testing.assert_array_equal(stored.to_stored(stored.decoded), stored.stored)


def test_the_editor_refuses_a_modality_lut_it_cannot_write_back():
    with pytest.raises(InputError, match="mlut_18.dcm: its values come through a Modality LUT"):
        read_stored(shipped_dicom("mlut_18.dcm"))
