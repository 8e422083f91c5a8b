"""Inpainting training masks: each kind has the geometry it promises, in 2D and 3D."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from synthgen.config import InpaintConfig
from synthgen.data.masks import box_mask, draw_masks, grow, shape_mask, stroke_mask
from synthgen.errors import InputError
from synthgen.pipeline.space import to_model_mask


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_a_box_is_one_full_rectangle_within_the_size_range(shape):
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        mask = box_mask(shape, g).numpy().astype(bool)
        coords = np.argwhere(mask)
        lo, hi = coords.min(0), coords.max(0) + 1
        assert mask.sum() == np.prod(hi - lo), "not a full box"
        sides = (hi - lo) / np.array(shape)
        assert (sides >= 0.1).all() and (sides <= 0.55).all()


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_a_stroke_is_one_connected_irregular_region(shape):
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        mask = stroke_mask(shape, g).numpy()
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.sum() > 0
        assert ndimage.label(mask)[1] == 1
        assert mask.mean() < 0.9


def test_shape_masks_follow_the_dataset_labels_grown_by_dilate():
    labels = torch.zeros(32, 32, dtype=torch.int32)
    labels[5:10, 5:10] = 1
    labels[20, 20] = 3
    g = torch.Generator().manual_seed(2)
    seen = set()
    for _ in range(30):
        mask = shape_mask(labels, 0, g)
        assert mask is not None
        region = 1 if mask[5, 5] else 3
        assert torch.equal(mask.bool(), labels == region)
        seen.add(region)
    assert seen == {1, 3}
    grown = shape_mask(torch.where(labels == 3, 3, 0), 2, g)
    assert grown.sum() == 25 and grown[18:23, 18:23].all()
    assert shape_mask(torch.zeros(8, 8), 1, g) is None


def test_draw_masks_mixes_plain_and_kinds_by_the_config():
    g = torch.Generator().manual_seed(3)
    cfg = InpaintConfig(plain=0.3, box=1.0, stroke=0.0, shape=0.0)
    masks = draw_masks(2000, (16, 16), cfg, None, g)
    assert masks.shape == (2000, 1, 16, 16)
    plain = masks.flatten(1).all(dim=1).float().mean()
    assert abs(float(plain) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 2000)
    labels = torch.zeros(4, 16, 16, dtype=torch.int32)
    labels[:, 2:4, 2:4] = 1
    only_shapes = draw_masks(4, (16, 16), InpaintConfig(plain=0, box=0, stroke=0), labels, g)
    assert torch.equal(
        only_shapes[:, 0].bool(), grow(labels[0].float(), 1).bool().expand(4, -1, -1)
    )
    with pytest.raises(InputError, match="shape masks need mask columns"):
        draw_masks(2, (16, 16), InpaintConfig(plain=0, box=0, stroke=0), None, g)


def test_a_one_pixel_mask_survives_downsampling_to_latent_cells():
    mask = torch.zeros(1, 1, 32, 32)
    mask[0, 0, 13, 7] = 1
    small = to_model_mask(mask, (8, 8))
    assert small.sum() == 1 and small[0, 0, 3, 1] == 1
    volume = torch.zeros(1, 1, 16, 16, 16)
    volume[0, 0, 1, 2, 3] = 1
    assert to_model_mask(volume, (4, 4, 4))[0, 0, 0, 0, 0] == 1
