"""Array operations and MONAI transforms of the data pipeline (pam_monai.data.ops / .transforms)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.transforms import NormalizeIntensity, ResizeWithPadOrCrop

from pam_monai.data import DATASETS, crop_or_pad_center, normalize_nonzero, random_flip_batch, uncrop_center
from pam_monai.data.ops import binarize, resize_2d
from pam_monai.data.transforms import BinarizeLabeld, CenterCropOrPadd, NormalizeNonZerod

sizes = st.lists(st.integers(1, 13), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(shape=sizes, data=st.data())
def test_crop_or_pad_matches_monai(shape, data):
    target = data.draw(st.lists(st.integers(1, 13), min_size=len(shape), max_size=len(shape)))
    x = np.random.default_rng(0).integers(1, 100, size=(2, *shape)).astype(np.float32)
    ours = crop_or_pad_center(x, target)
    theirs = np.asarray(ResizeWithPadOrCrop(spatial_size=target)(torch.from_numpy(x)))
    assert ours.shape == (2, *target)
    np.testing.assert_array_equal(ours, theirs)


@settings(max_examples=60, deadline=None)
@given(shape=sizes, data=st.data())
def test_uncrop_is_the_inverse_of_crop_or_pad(shape, data):
    target = data.draw(st.lists(st.integers(1, 13), min_size=len(shape), max_size=len(shape)))
    x = np.random.default_rng(1).integers(1, 100, size=(3, *shape)).astype(np.int16)
    y = crop_or_pad_center(x, target)
    back = uncrop_center(y, shape)
    assert back.shape == x.shape
    # what the crop kept comes back in place; what it cut is zero
    kept = uncrop_center(crop_or_pad_center(np.ones_like(x), target), shape).astype(bool)
    np.testing.assert_array_equal(back[kept], x[kept])
    assert not back[~kept].any()
    # and going the other way is exact
    np.testing.assert_array_equal(crop_or_pad_center(uncrop_center(y, shape), target), y)


def test_brats_crop_is_rows_and_columns_40_to_200_and_keeps_depth():
    x = np.arange(240 * 240 * 3, dtype=np.int32).reshape(1, 240, 240, 3)
    y = crop_or_pad_center(x, (160, 160, -1))
    assert y.shape == (1, 160, 160, 3)
    np.testing.assert_array_equal(y, x[:, 40:200, 40:200])


def test_isles_pads_small_slices_and_crops_large_ones():
    small = np.ones((1, 200, 256, 2), np.float32)
    y = crop_or_pad_center(small, (224, 224, -1))
    assert y.shape == (1, 224, 224, 2)
    assert y[0, :12].sum() == 0 and y[0, 212:].sum() == 0 and y[0, 12:212].all()


def test_normalize_nonzero_matches_monai_and_guards_zero_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 20, size=(4, 9, 8, 5)).astype(np.float32)
    x[:, :2] = 0  # background
    x[2][x[2] != 0] = 7.0  # constant non-zero channel: zero variance
    x[3] = 0  # all-zero channel
    ours = normalize_nonzero(x)
    theirs = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(x.copy())))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert np.isfinite(ours).all()
    assert (ours[:, :2] == 0).all()  # zeros stay zero
    assert (ours[2] == 0).all()  # mean removed, divided by 1
    nz = ours[0][x[0] != 0]
    assert abs(nz.mean()) < 1e-4 and abs(nz.std() - 1) < 1e-4


def test_normalize_nonzero_with_whole_volume_stats_equals_normalise_then_crop():
    from pam_monai.data.ops import nonzero_stats

    x = np.random.default_rng(2).integers(0, 50, size=(2, 30, 30, 4)).astype(np.int16)
    stats = [nonzero_stats(c) for c in x]
    a = normalize_nonzero(crop_or_pad_center(x, (16, 16, -1)), stats)
    b = crop_or_pad_center(normalize_nonzero(x), (16, 16, -1))
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_binarize_any_label_dtype(dtype):
    label = np.array([[0, 1, 2], [4, 4, 3]], dtype=dtype)
    np.testing.assert_array_equal(binarize(label, (4,)), [[0, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(binarize(label, (3,)), [[0, 0, 0], [0, 0, 1]])


def test_resize_nearest_exact_samples_pixel_centres():
    label = np.random.default_rng(3).integers(0, 34, size=(1, 64, 128)).astype(np.float32)
    out = resize_2d(label, (8, 16), "nearest-exact")
    np.testing.assert_array_equal(out[0], label[0, 4::8, 4::8])


def test_random_flip_batch_all_none_and_per_sample():
    image = torch.arange(6 * 2 * 3 * 4, dtype=torch.float32).reshape(6, 2, 3, 4)
    label = (image[:, :1] > 50).float()
    batch = {"image": image, "label": label, "case": ["a"] * 6}
    flipped = random_flip_batch(batch, prob=1.0)
    torch.testing.assert_close(flipped["image"], image.flip(-1))
    torch.testing.assert_close(flipped["label"], label.flip(-1))
    assert flipped["case"] is batch["case"]
    same = random_flip_batch(batch, prob=0.0)
    torch.testing.assert_close(same["image"], image)

    g = torch.Generator().manual_seed(7)
    out = random_flip_batch(batch, prob=0.5, spatial_axis=-2, generator=g)
    decisions = torch.rand(6, generator=torch.Generator().manual_seed(7)) < 0.5
    assert 0 < int(decisions.sum()) < 6  # this seed mixes flipped and unflipped samples
    for i, flip in enumerate(decisions):
        expect = image[i].flip(-2) if flip else image[i]
        torch.testing.assert_close(out["image"][i], expect)
        torch.testing.assert_close(out["label"][i], label[i].flip(-2) if flip else label[i])
    with pytest.raises(ValueError, match="batch axis"):
        random_flip_batch(batch, prob=1.0, spatial_axis=0)


def test_dataset_flip_axes_point_at_left_right():
    # BRATS/ISLES slices are NIfTI axis 0 x axis 1, axis 0 being left-right; CityScapes: width
    assert DATASETS["brats"].flip_axis == DATASETS["isles"].flip_axis == -2
    assert DATASETS["cityscapes"].flip_axis == -1


def test_monai_dict_transforms():
    rng = np.random.default_rng(4)
    vol = torch.from_numpy(rng.integers(0, 9, size=(2, 240, 240, 3)).astype(np.float32))
    sl = vol[..., 0]
    d = CenterCropOrPadd(["v", "s"], roi_size=(160, 160))({"v": vol, "s": sl})
    assert tuple(d["v"].shape) == (2, 160, 160, 3) and tuple(d["s"].shape) == (2, 160, 160)
    torch.testing.assert_close(torch.as_tensor(d["v"]), vol[:, 40:200, 40:200])
    b = BinarizeLabeld("l", foreground=4)({"l": torch.tensor([[0, 4, 2, 4]], dtype=torch.int16)})
    assert b["l"].dtype == torch.float32 and b["l"].tolist() == [[0.0, 1.0, 0.0, 1.0]]
    n = NormalizeNonZerod("x")({"x": vol.clone()})
    np.testing.assert_allclose(np.asarray(n["x"]), normalize_nonzero(vol.numpy()), atol=1e-5)


def test_binarize_labeld_keeps_the_label_s_metadata():
    """BinarizeLabeld returned a plain tensor for a MetaTensor label, dropping its affine and
    spacing as no MONAI dictionary transform does: a user's pipeline after it (``Spacingd``,
    ``SaveImaged``, HD95 in mm from ``label.pixdim``) lost the label's grid."""
    from monai.data import MetaTensor

    affine = torch.diag(torch.tensor([1.2, 1.2, 3.0, 1.0], dtype=torch.float64))
    label = MetaTensor(torch.tensor([[[[0, 3], [1, 5]]]], dtype=torch.uint8), affine=affine)
    out = BinarizeLabeld("label", foreground=(1, 3), ignore=5)({"label": label})["label"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    torch.testing.assert_close(out.affine, affine)
    assert [float(s) for s in out.pixdim] == pytest.approx([1.2, 1.2, 3.0])
    assert out.as_tensor().flatten().tolist() == [0.0, 1.0, 1.0, 2.0]
