"""What inference and the converters write lies on their inputs' grids, as a viewer sees them:
nibabel's view (affine, qform / sform with their codes, zooms, units) and ITK's (SimpleITK: origin,
spacing, direction, size; ITK-SNAP and 3D Slicer read NIfTI through ITK). Real samples from
../shared/data where they are needed (skipped when absent)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from pam_monai.data import get_spec
from pam_monai.engines import CasePredictor, find_inference_cases


class Pointwise(torch.nn.Module):
    """Logit = 10 x the first channel's normalised value: the mask is a known function of each voxel."""

    def forward(self, x):
        return 10.0 * x[:, :1]


def sitk_grid(path) -> tuple:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection()


def assert_same_grid(out, ref) -> None:
    """``out`` lies where ``ref`` does for nibabel and for ITK."""
    a, b = nib.load(str(out)), nib.load(str(ref))
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    for form in ("qform", "sform"):
        assert int(a.header[f"{form}_code"]) == int(b.header[f"{form}_code"]), form
        np.testing.assert_allclose(
            getattr(a.header, f"get_{form}")(), getattr(b.header, f"get_{form}")(), atol=1e-5
        )
    np.testing.assert_allclose(a.header.get_zooms(), b.header.get_zooms())
    assert a.header.get_xyzt_units() == b.header.get_xyzt_units()
    (size, origin, spacing, direction), ref_grid = sitk_grid(out), sitk_grid(ref)
    assert size == ref_grid[0]
    np.testing.assert_allclose(origin, ref_grid[1], atol=1e-4)
    np.testing.assert_allclose(spacing, ref_grid[2], atol=1e-5)
    np.testing.assert_allclose(direction, ref_grid[3], atol=1e-5)


def test_masks_of_a_registered_image_keep_its_scanner_qform(shared_data, tmp_path):
    """The real ISLES'22 DWI / ADC saved as a registration tool leaves them: the scanner's qform
    (code 1) beside an aligned sform (code 2) 11 mm away. The mask and probability map carry both
    as the input does; they had the sform written into the qform too, so ITK-SNAP, 3D Slicer and
    SimpleITK (which place such a file by its qform) showed the mask 11 mm off its image."""
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    case = shared_data / "isles2022" / "sub-strokecase0009"
    root = tmp_path / "Dataset951_Registered"
    (root / "imagesTs").mkdir(parents=True)
    for c, kind in enumerate(("dwi", "adc")):
        src = nib.load(str(case / f"sub-strokecase0009_ses-0001_{kind}.nii.gz"))
        img = nib.Nifti1Image(np.asarray(src.dataobj, dtype=np.float32), src.affine)
        aligned = src.affine.copy()
        aligned[:3, 3] += (10.0, -5.0, 3.0)
        img.set_qform(src.affine, code=1)
        img.set_sform(aligned, code=2)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, str(root / "imagesTs" / f"case_{c:04d}.nii.gz"))
    meta = {"channel_names": {"0": "DWI", "1": "ADC"}, "labels": {"background": 0, "lesion": 1}}
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 0, "file_ending": ".nii.gz"}))
    spec = get_spec("nnunet", root=root, crop_size=(128, 128))
    out = tmp_path / "out"
    items = find_inference_cases(spec, root / "imagesTs")
    CasePredictor(Pointwise(), items, spec, str(out), save_probabilities=True).run()
    image = root / "imagesTs" / "case_0000.nii.gz"
    scanner = nib.load(str(image)).header.get_qform()[:3, 3] * (-1, -1, 1)  # RAS -> ITK's LPS
    np.testing.assert_allclose(sitk_grid(image)[1], scanner, atol=1e-3)  # ITK: by the qform
    for kind, dtype in (("seg", np.uint8), ("prob", np.float32)):
        path = out / f"case_{kind}.nii.gz"
        assert_same_grid(path, image)
        written = nib.load(str(path))
        assert written.get_data_dtype() == dtype
        assert written.header.get_slope_inter() == (None, None)  # values read back as stored
        values = np.asanyarray(written.dataobj)
        assert values.dtype == dtype and values.min() >= 0 and values.max() <= 1
    mask = np.asanyarray(nib.load(str(out / "case_seg.nii.gz")).dataobj)
    assert set(np.unique(mask)) == {0, 1}


def test_msd_channels_keep_the_qform_and_sform_of_their_4d_file(tmp_path):
    """An MSD 4-D image with the scanner's qform beside an aligned sform: each converted channel
    carries both, as its 4-D file does (the sform had replaced the qform: ITK showed the channels
    elsewhere than the label, copied as shipped)."""
    from pam_monai.data.msd import convert_msd

    task = tmp_path / "Task98_Registered"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    scanner = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0.2, -100], [0, -0.1, 2.0, -60], [0, 0, 0, 1]])
    aligned = scanner.copy()
    aligned[:3, 3] += (4.0, 2.0, -7.0)
    data = np.random.default_rng(0).normal(size=(12, 10, 6, 2)).astype(np.float32)
    img = nib.Nifti1Image(data, aligned)
    img.set_qform(scanner, code=1)
    img.set_sform(aligned, code=2)
    nib.save(img, str(task / "imagesTr" / "reg_001.nii.gz"))
    label = nib.Nifti1Image((data[..., 0] > 1).astype(np.uint8), aligned, header=img.header)
    nib.save(label, str(task / "labelsTr" / "reg_001.nii.gz"))
    meta = {
        "modality": {"0": "T1", "1": "T2"},
        "labels": {"0": "background", "1": "lesion"},
        "training": [{"image": "./imagesTr/reg_001.nii.gz", "label": "./labelsTr/reg_001.nii.gz"}],
    }
    (task / "dataset.json").write_text(json.dumps(meta))
    out = convert_msd(task, tmp_path / "Dataset098_Registered", progress=False)
    for c in range(2):
        channel = out / "imagesTr" / f"reg_001_{c:04d}.nii.gz"
        np.testing.assert_array_equal(np.asanyarray(nib.load(str(channel)).dataobj), data[..., c])
        assert_same_grid(channel, out / "labelsTr" / "reg_001.nii.gz")


def test_brats_masks_land_on_their_voxels_and_score_reads_them_back(shared_data, tmp_path):
    """The real BraTS cases (240 x 240 x 155, stored LPS) through inference with a network whose
    logit is 10 x the normalised FLAIR: the mask, put back from the 160 x 160 centre crop, is
    exactly FLAIR above its non-zero mean inside [40:200, 40:200] and nothing outside (no shift,
    no flip, no transposition), on the FLAIR's grid; ``score`` reads those masks back against the
    real labels and gives the IoU computed here by hand."""
    from pam_monai.engines.score import score_predictions

    root, out = shared_data / "brats2018", tmp_path / "out"
    CasePredictor(Pointwise(), find_inference_cases("brats", root), "brats", str(out)).run()
    ious = {}
    for case in ("Brats18_2013_2_1", "Brats18_TCIA05_396_1"):
        flair = root / case / f"{case}_flair.nii.gz"
        values = np.asanyarray(nib.load(str(flair)).dataobj).astype(np.float64)
        expected = np.zeros(values.shape, np.uint8)
        inside = values[40:200, 40:200]
        expected[40:200, 40:200] = inside > values[values != 0].mean()
        mask_path = out / f"{case}_seg.nii.gz"
        assert_same_grid(mask_path, flair)
        mask = np.asanyarray(nib.load(str(mask_path)).dataobj)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected)
        enhancing = np.asanyarray(nib.load(str(root / case / f"{case}_seg.nii.gz")).dataobj) == 4
        ious[case] = (mask.astype(bool) & enhancing).sum() / (mask.astype(bool) | enhancing).sum()
    summary = score_predictions(out, "brats", root, tmp_path / "scores")
    assert summary["count"] == 2
    rows = (tmp_path / "scores" / "metrics.csv").read_text().splitlines()[1:]
    scored = {row.split(",")[0]: float(row.split(",")[1]) for row in rows}
    assert scored == pytest.approx(ious, rel=1e-5)


@pytest.mark.parametrize("ending", [".mha", ".nrrd"])
def test_metaimage_and_nrrd_masks_lie_on_their_input_as_simpleitk_reads_it(shared_data, tmp_path, ending):
    """The real ISLES'22 DWI / ADC (oblique: direction cosines off the axes) converted to MetaImage /
    NRRD with SimpleITK: the mask and probability map have the input's size, origin, spacing and
    direction as SimpleITK reads them, uint8 / float32, and the very voxels of the NIfTI input's mask."""
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # NIfTI header fields MetaImage has no place for
    case = shared_data / "isles2022" / "sub-strokecase0009"
    meta = {
        "channel_names": {"0": "DWI", "1": "ADC"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": 0,
    }
    masks = {}
    for suffix in (".nii.gz", ending):
        root = tmp_path / suffix.strip(".").replace(".", "_")
        (root / "imagesTs").mkdir(parents=True)
        for c, kind in enumerate(("dwi", "adc")):
            image = sitk.ReadImage(str(case / f"sub-strokecase0009_ses-0001_{kind}.nii.gz"))
            sitk.WriteImage(image, str(root / "imagesTs" / f"case_{c:04d}{suffix}"))
        (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": suffix}))
        spec = get_spec("nnunet", root=root, crop_size=(128, 128))
        items = find_inference_cases(spec, root / "imagesTs")
        CasePredictor(Pointwise(), items, spec, str(root / "out"), save_probabilities=True).run()
        image = sitk.ReadImage(str(root / "imagesTs" / f"case_0000{suffix}"))
        assert not np.allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-2)  # oblique
        for kind, pixel in (("seg", sitk.sitkUInt8), ("prob", sitk.sitkFloat32)):
            written = sitk.ReadImage(str(root / "out" / f"case_{kind}{suffix}"))
            assert written.GetPixelID() == pixel
            assert written.GetSize() == image.GetSize()
            np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-6)
            np.testing.assert_allclose(written.GetDirection(), image.GetDirection(), atol=1e-6)
        masks[suffix] = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "out" / f"case_seg{suffix}")))
    assert masks[ending].any()
    np.testing.assert_array_equal(masks[ending], masks[".nii.gz"])


def test_masks_of_photographs_viewers_turn_are_turned_with_them(tmp_path):
    """An own 2-D image with an EXIF orientation (viewers show it turned 90 degrees) is segmented
    as stored; its mask, of the stored pixels, now carries the same tag, so a viewer turns the mask
    with its image (it showed the mask unturned across the turned photograph); the ensemble's
    mask too. Images without the tag get masks without it."""
    from PIL import Image

    from pam_monai.data import synth
    from pam_monai.data.files import exif_orientation
    from pam_monai.engines.ensemble import ensemble_probabilities

    root = synth("nnunet", tmp_path / "Dataset952_Photos", cases=2, test_cases=0, two_d=True)
    turned = root / "imagesTr" / "SYN_001_0000.png"
    with Image.open(turned) as im:
        pixels, exif = np.asarray(im), Image.Exif()
        exif[0x0112] = 6
        im.save(turned, exif=exif)
    spec = get_spec("nnunet", root=root)
    items = find_inference_cases(spec, root / "imagesTr")
    for run in ("a", "b"):
        CasePredictor(Pointwise(), items, spec, str(tmp_path / run), save_probabilities=True).run()
    ensemble_probabilities([tmp_path / "a", tmp_path / "b"], tmp_path / "mean")
    for folder in ("a", "mean"):
        mask = tmp_path / folder / "SYN_001_seg.png"
        assert exif_orientation(mask) == 6
        with Image.open(mask) as im:
            assert im.mode == "L" and np.asarray(im).shape == pixels.shape[:2]  # the stored pixels
        assert exif_orientation(tmp_path / folder / "SYN_002_seg.png") is None
