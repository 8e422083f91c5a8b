"""Readers and writers on real scans that installed packages ship, plus PNG/NIfTI round trips."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import shipped_dicom
from nibabel.testing import data_path as nibabel_data

from synthgen.data.intensity import from_model, to_model, window_for
from synthgen.data.io import default_affine, max_voxels, read_image, write_nifti, write_png
from synthgen.data.schema import IntensityPolicy
from synthgen.errors import InputError


def test_ct_small_values_are_pixel_array_times_slope_plus_intercept():
    path = shipped_dicom("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
        ds.RescaleIntercept
    )
    assert float(ds.RescaleIntercept) != 0.0  # the check below would be vacuous otherwise
    np.testing.assert_array_equal(image.array, expected)
    assert image.spacing == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))
    assert image.affine is None and image.spatial_dims == 2


def test_mr_small_without_rescale_keeps_stored_values():
    path = shipped_dicom("MR_small.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    np.testing.assert_array_equal(image.array, ds.pixel_array.astype(np.float32))
    assert image.array.shape == (64, 64)
    assert image.spacing == pytest.approx((0.3125, 0.3125))


def test_multiframe_dicom_reads_as_a_volume():
    path = shipped_dicom("rtdose.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    assert image.spatial_dims == 3
    assert image.array.shape == (int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    np.testing.assert_array_equal(image.array, ds.pixel_array.astype(np.float32))
    assert image.affine is not None and image.affine.shape == (4, 4)


def test_colour_dicom_is_refused():
    with pytest.raises(InputError, match="colour DICOM"):
        read_image(shipped_dicom("SC_rgb_rle_2frame.dcm"))


def test_nibabel_anatomical_round_trips_with_identical_data_and_affine(tmp_path):
    source = Path(nibabel_data) / "anatomical.nii"
    reference = nib.load(source)
    image = read_image(source)
    np.testing.assert_array_equal(image.array, reference.get_fdata())
    np.testing.assert_array_equal(image.affine, reference.affine)
    assert image.spacing == pytest.approx(reference.header.get_zooms()[:3])
    for name in ("copy.nii", "copy.nii.gz"):
        write_nifti(tmp_path / name, image.array, image.affine)
        again = read_image(tmp_path / name)
        np.testing.assert_array_equal(again.array, image.array)
        np.testing.assert_array_equal(again.affine, image.affine)
        assert again.spacing == image.spacing


def test_nifti_bytes_are_deterministic(tmp_path):
    rng = np.random.default_rng(7)
    volume = rng.normal(size=(6, 5, 4)).astype(np.float32)
    affine = default_affine((1.0, 1.5, 2.0), volume.shape)
    write_nifti(tmp_path / "a.nii.gz", volume, affine)
    write_nifti(tmp_path / "b.nii.gz", volume, affine)
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()


def test_default_affine_centres_the_volume():
    affine = default_affine((2.0, 2.0, 2.0), (5, 5, 5))
    centre = affine @ np.array([2.0, 2.0, 2.0, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip_8_and_16_bit(tmp_path, dtype):
    rng = np.random.default_rng(3)
    array = rng.integers(0, np.iinfo(dtype).max, size=(17, 23), endpoint=True).astype(dtype)
    write_png(tmp_path / "x.png", array, text={"synthgen": "test"})
    image = read_image(tmp_path / "x.png")
    np.testing.assert_array_equal(image.array, array.astype(np.float32))
    assert image.spacing == (1.0, 1.0)
    from PIL import Image as PILImage

    with PILImage.open(tmp_path / "x.png") as img:
        assert img.text["synthgen"] == "test"


def test_write_leaves_no_temporary_files(tmp_path):
    write_png(tmp_path / "sub" / "x.png", np.zeros((4, 4), np.uint8))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]


def test_rgb_png_with_equal_channels_is_gray_and_colour_is_refused(tmp_path):
    from PIL import Image as PILImage

    gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
    PILImage.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png").array, gray)
    colour = np.stack([gray, gray, gray[::-1]], axis=-1)
    PILImage.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(InputError, match="colour image"):
        read_image(tmp_path / "c.png")


def test_multipage_tiff_reads_as_a_volume(tmp_path):
    from PIL import Image as PILImage

    pages = [PILImage.fromarray(np.full((5, 6), k, np.uint8)) for k in range(3)]
    pages[0].save(tmp_path / "v.tif", save_all=True, append_images=pages[1:])
    image = read_image(tmp_path / "v.tif")
    assert image.array.shape == (3, 5, 6)
    np.testing.assert_array_equal(image.array[:, 0, 0], [0, 1, 2])


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("gone.png", None, "file not found"),
        ("bad.png", b"\x89PNG\r\n\x1a\n garbage", "cannot decode"),
        ("bad.nii.gz", b"not a nifti", "cannot decode"),
        ("bad.dcm", b"not a dicom", "cannot decode"),
        ("x.bmpx", b"", "unsupported format"),
    ],
)
def test_unreadable_files_raise_input_errors_naming_the_file(tmp_path, name, content, reason):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError) as err:
        read_image(tmp_path / name)
    assert name in str(err.value) and reason in str(err.value)


RAISE = "set SYNTHGEN_MAX_VOXELS to raise it"


def write_tiff(path: Path, sides: list[int]) -> None:
    from PIL import Image as PILImage

    pages = [PILImage.fromarray(np.zeros((side, side), np.uint8)) for side in sides]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def boom(*args, **kwargs):
    raise AssertionError("decoded before the size was checked")


@pytest.mark.parametrize(
    ("name", "write", "decoder", "reason"),
    [
        pytest.param(
            "x.png",
            lambda p: write_png(p, np.zeros((32, 32), np.uint8)),
            "PIL.ImageFile.ImageFile.load",
            f"declares over the limit of 1,000 pixels; {RAISE}",
            id="png",
        ),
        pytest.param(
            "x.tif",
            lambda p: write_tiff(p, [20, 20, 20]),
            "PIL.ImageFile.ImageFile.load",
            f"declares 3×20×20 = 1,200 voxels, over the limit of 1,000; {RAISE}",
            id="tiff-frames",
        ),
        pytest.param(
            "x.nii.gz",
            lambda p: write_nifti(p, np.zeros((8, 8, 16), np.float32), np.eye(4)),
            "nibabel.nifti1.Nifti1Image.get_fdata",
            f"declares 8×8×16 = 1,024 voxels, over the limit of 1,000; {RAISE}",
            id="nifti",
        ),
        pytest.param(
            "x.dcm",
            lambda p: p.write_bytes(shipped_dicom("MR_small.dcm").read_bytes()),
            "pydicom.dataset.Dataset.pixel_array",
            f"declares 64×64 = 4,096 pixels, over the limit of 1,000; {RAISE}",
            id="dicom",
        ),
        pytest.param(
            "x.dcm",
            lambda p: p.write_bytes(shipped_dicom("rtdose.dcm").read_bytes()),
            "pydicom.dataset.Dataset.pixel_array",
            f"declares 15×10×10 = 1,500 voxels, over the limit of 1,000; {RAISE}",
            id="dicom-frames",
        ),
    ],
)
def test_a_declared_size_over_the_limit_is_refused_before_decoding(
    tmp_path, monkeypatch, name, write, decoder, reason
):
    """The limit comes from SYNTHGEN_MAX_VOXELS and is checked on the header: the decoder, made
    to fail here, is never reached."""
    write(tmp_path / name)
    monkeypatch.setenv("SYNTHGEN_MAX_VOXELS", "1000")
    monkeypatch.setattr(decoder, property(boom) if decoder.endswith("pixel_array") else boom)
    with pytest.raises(InputError) as err:
        read_image(tmp_path / name)
    assert str(err.value) == f"{tmp_path / name}: {reason}"


def test_an_image_at_the_limit_is_read_and_the_default_takes_a_big_ct(tmp_path, monkeypatch):
    write_png(tmp_path / "x.png", np.zeros((32, 32), np.uint8))
    monkeypatch.setenv("SYNTHGEN_MAX_VOXELS", "1024")
    assert read_image(tmp_path / "x.png").array.shape == (32, 32)
    monkeypatch.delenv("SYNTHGEN_MAX_VOXELS")
    assert max_voxels() >= 512 * 512 * 1000


def test_a_tiff_frame_bigger_than_the_first_is_refused_before_decoding(tmp_path, monkeypatch):
    """The limit counts frame 0's size once per frame, so a later, larger frame is refused
    before any frame is decoded."""
    write_tiff(tmp_path / "x.tif", [4, 4000])
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", boom)
    with pytest.raises(InputError, match=r"x\.tif: frame 1 is \(4000, 4000\), frame 0 is \(4, 4\)"):
        read_image(tmp_path / "x.tif")


@pytest.mark.parametrize("value", ["lots", "0", "-5", "1e9"])
def test_a_bad_limit_is_an_error_naming_the_variable(tmp_path, monkeypatch, value):
    write_png(tmp_path / "x.png", np.zeros((8, 8), np.uint8))
    monkeypatch.setenv("SYNTHGEN_MAX_VOXELS", value)
    with pytest.raises(InputError, match=f"SYNTHGEN_MAX_VOXELS='{value}': expected a whole"):
        read_image(tmp_path / "x.png")


def test_window_policy_round_trips_inside_the_window():
    rng = np.random.default_rng(11)
    hu = rng.uniform(-1000, 1000, size=(32, 32)).astype(np.float32)
    policy = IntensityPolicy(mode="window", center=0, width=2000)
    window = window_for(hu, policy)
    assert window == (-1000.0, 1000.0)
    scaled = to_model(hu, window)
    assert scaled.min() >= -1 and scaled.max() <= 1
    np.testing.assert_allclose(from_model(scaled, window), hu, atol=1e-3)


def test_percentile_policy_maps_the_percentiles_to_the_ends():
    rng = np.random.default_rng(12)
    array = rng.normal(100, 20, size=(64, 64)).astype(np.float32)
    policy = IntensityPolicy(mode="percentile", percentiles=(1, 99))
    low, high = window_for(array, policy)
    assert low == pytest.approx(np.percentile(array, 1)) and high == pytest.approx(
        np.percentile(array, 99)
    )
    scaled = to_model(array, (low, high))
    assert np.mean(scaled == -1) == pytest.approx(0.01, abs=0.003)
    assert np.mean(scaled == 1) == pytest.approx(0.01, abs=0.003)


def test_atomic_write_gives_the_mode_a_plain_open_would(tmp_path):
    import os
    import stat

    from synthgen.data.io import atomic_write_bytes

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    atomic_write_bytes(tmp_path / "atomic.bin", b"y")
    mode = stat.S_IMODE(os.stat(tmp_path / "atomic.bin").st_mode)
    assert mode == stat.S_IMODE(os.stat(plain).st_mode)
    assert (tmp_path / "atomic.bin").read_bytes() == b"y"
