"""Readers, checker, preprocessing and inference round trip on the real samples in ../shared/data
(skipped when that folder is absent; the facts come from ../shared/data/README.md)."""

import json

import nibabel as nib
import numpy as np
import pytest

from pam_monai.cli import main as cli
from pam_monai.data import (
    SliceDataset,
    build_datalist,
    check_dataset,
    get_preprocess_transforms,
    load_case,
    preprocess_case,
    restore_prediction,
)
from pam_monai.data.checker import check_label_values
from pam_monai.data.files import load_nifti

BRATS_FACTS = {  # case: (enhancing tumour voxels, slices with enhancing tumour, seg dtype)
    "Brats18_2013_2_1": (21_677, 40, np.int16),
    "Brats18_TCIA05_396_1": (16_998, 46, np.uint8),
}


@pytest.fixture(scope="module")
def brats_root(shared_data):
    return shared_data / "brats2018"


@pytest.fixture(scope="module")
def brats_report(brats_root):
    return check_dataset("brats", brats_root)


def test_brats_datalist_has_both_cases_with_four_modalities_in_order(brats_root, tmp_path):
    out = tmp_path / "brats.json"
    cli(["datalist", "--dataset", "brats", "--root", str(brats_root), "--output", str(out)])
    entries = json.loads(out.read_text())["training"]
    assert [e["case"] for e in entries] == sorted(BRATS_FACTS)
    for e in entries:
        c = e["case"]
        assert e["image"] == [f"{c}/{c}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")]
        assert all((brats_root / p).is_file() for p in [*e["image"], e["label"]])
        assert "fold" in e


def test_brats_checker_reports_the_known_enhancing_tumour(brats_report):
    assert brats_report.ok, brats_report.format()
    assert not brats_report.warnings
    for case, (voxels, slices, _) in BRATS_FACTS.items():
        s = brats_report.summary(case)
        assert (s.foreground, s.foreground_slices, s.inside_crop) == (voxels, slices, True)
        assert s.shape == (4, 160, 160, 155)
    table = brats_report.format()
    assert "21,677" in table and "16,998" in table
    # BraTS 2018 as shipped: 1 mm isotropic (../shared/data/README.md), stored LPS
    assert (
        "voxel spacing (mm): 1x1x1 (2 cases)" in table and "orientation (affine axis codes): LPS 2" in table
    )


def test_brats_seg_dtypes_are_int16_and_uint8(brats_root):
    for case, (*_, dtype) in BRATS_FACTS.items():
        seg, _ = load_nifti(brats_root / case / f"{case}_seg.nii.gz")
        assert seg.dtype == dtype and set(np.unique(seg).tolist()) == {0, 1, 2, 4}


def test_brats_preprocess_slices_and_inverse(brats_root, tmp_path):
    item = build_datalist("brats", brats_root)["training"][1]  # Brats18_TCIA05_396_1
    item = {
        **item,
        "image": [str(brats_root / p) for p in item["image"]],
        "label": str(brats_root / item["label"]),
    }
    case = load_case("brats", item)
    pre = preprocess_case("brats", case)
    ref = get_preprocess_transforms("brats")(dict(item))
    np.testing.assert_allclose(pre["image"], np.asarray(ref["image"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pre["label"], np.asarray(ref["label"]))
    assert pre["label"].sum() == 16_998

    # inference path: a prediction on the crop goes back into the 240 x 240 x 155 grid, same affine
    back = restore_prediction("brats", pre["label"][0].astype(np.uint8), case["original_shape"])
    path = tmp_path / "pred.nii.gz"
    nib.save(nib.Nifti1Image(back, case["affine"]), str(path))
    saved, affine = load_nifti(path)
    assert saved.shape == (240, 240, 155)
    np.testing.assert_array_equal(affine, load_nifti(item["image"][0])[1])
    np.testing.assert_array_equal(saved, (case["label"] == 4).astype(np.uint8))

    ds = SliceDataset([item], "brats", keep_background_fraction=0.5, progress=False)
    assert len(ds) == 46 + int(np.floor(0.5 * (155 - 46) + 0.5))
    assert sum(float(ds[i]["label"].sum()) for i in range(len(ds))) == 16_998


def test_cityscapes_vehicle_pixels_and_resized_mask(shared_data):
    root = shared_data / "cityscapes"
    report = check_dataset("cityscapes", root)
    assert report.ok, report.format()
    full = report.summary("frankfurt_000001_058914")
    assert full.foreground == 34_028 and full.shape == (3, 128, 256)
    small = report.summary("frankfurt_000000_000294")
    assert small.foreground == small.foreground_kept == 1_802  # already 256 x 128: unchanged

    folder = root / "frankfurt_000001_058914"
    item = {
        "case": "frankfurt_000001_058914",
        "image": str(folder / "frankfurt_000001_058914_leftImg8bit.png"),
        "label": str(folder / "frankfurt_000001_058914_gtFine_labelIds.png"),
    }
    case = load_case("cityscapes", item)
    vehicles = (case["label"] >= 26) & (case["label"] <= 33)
    assert vehicles.sum() == 34_028 and case["label"].shape == (1024, 2048)
    pre = preprocess_case("cityscapes", case)
    assert pre["image"].shape == (3, 128, 256) and pre["label"].shape == (1, 128, 256)
    # the 8x smaller mask samples the full one at the centres of 8 x 8 blocks
    np.testing.assert_array_equal(pre["label"][0], vehicles[4::8, 4::8])
    assert abs(pre["label"].sum() * 64 - 34_028) < 0.1 * 34_028
    # and the image is the 8 x 8 block mean, scaled to [0, 1]
    rgb = case["image"].astype(np.float64) / 255
    blocks = rgb.reshape(3, 128, 8, 256, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(pre["image"], blocks, atol=1e-5)
    ref = get_preprocess_transforms("cityscapes")(dict(item))
    np.testing.assert_allclose(pre["image"], np.asarray(ref["image"]), atol=1e-6)
    np.testing.assert_array_equal(pre["label"], np.asarray(ref["label"]))


def test_cityscapes_palette_label_ids_load_as_their_indices(shared_data, tmp_path):
    """A labelIds PNG saved as a palette image (label values as indices, as some converters write
    them): the checker and scoring read its indices, and so must training's loader (not RGB)."""
    from PIL import Image

    folder = shared_data / "cityscapes" / "frankfurt_000000_000294_small"
    ids = np.asarray(Image.open(folder / "frankfurt_000000_000294_gtFine_labelIds.png"))
    palette = Image.fromarray(ids, mode="L").convert("P")  # identity palette: index = label value
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    label = tmp_path / "frankfurt_000000_000294_gtFine_labelIds.png"
    palette.save(label)
    assert Image.open(label).mode == "P"
    item = {"image": str(folder / "frankfurt_000000_000294_leftImg8bit.png"), "label": str(label)}
    case = load_case("cityscapes", item)
    np.testing.assert_array_equal(case["label"], ids)
    assert preprocess_case("cityscapes", case)["label"].sum() == 1_802


def test_cityscapes_validation_keeps_no_full_size_label_and_its_readmes_say_so(shared_data):
    """CityScapes validation scores on the 128 x 256 grid, so its cases hold no full-size label;
    the bundle READMEs once said they did (each case's label at its original size)."""
    from pathlib import Path

    from pam_monai.engines import CaseDataset

    folder = shared_data / "cityscapes" / "frankfurt_000001_058914"
    item = {
        "case": "frankfurt_000001_058914",
        "image": str(folder / "frankfurt_000001_058914_leftImg8bit.png"),
        "label": str(folder / "frankfurt_000001_058914_gtFine_labelIds.png"),
    }
    case = CaseDataset([item], "cityscapes")[0]
    assert "label_full" not in case and tuple(case["label"].shape) == (1, 128, 256)
    bundles = Path(__file__).resolve().parents[1] / "bundles"
    for name in ("cityscapes_fpa", "cityscapes_rfna"):
        text = " ".join((bundles / name / "docs" / "README.md").read_text().split())
        assert "label at its original size" not in text, name


def test_cityscapes_city_is_the_folder_in_the_published_layout(shared_data, tmp_path):
    """The published layout names the city by its folder (``<split>/<city>/``): frames whose names
    do not start with it (renamed, or copied from another city) are split by that folder, not by
    the first part of their name (every frame here is named frankfurt_...)."""
    import shutil

    real = shared_data / "cityscapes" / "frankfurt_000000_000294_small"
    for split, city, frame in [
        ("train", "aachen", "frankfurt_000000_000001"),
        ("train", "bochum", "frankfurt_000000_000002"),
        ("val", "lindau", "frankfurt_000000_000003"),
    ]:
        for top, ending in (("leftImg8bit", "_leftImg8bit.png"), ("gtFine", "_gtFine_labelIds.png")):
            folder = tmp_path / top / split / city
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(real / ("frankfurt_000000_000294" + ending), folder / (frame + ending))
    datalist = build_datalist("cityscapes", tmp_path, val_city="bochum")
    assert [e["city"] for e in datalist["training"]] == ["aachen"]
    assert [e["case"] for e in datalist["validation"]] == ["frankfurt_000000_000002"]
    assert [e["city"] for e in datalist["test"]] == ["lindau"]


@pytest.mark.parametrize("layout", ["published", "flat"])
def test_cityscapes_frames_of_one_name_in_two_folders_are_refused(shared_data, tmp_path, layout):
    """Renamed or copied frames (their city is their folder) may share a name across folders: a
    case is named by its frame, so the training split them into two cases of one name (one held out
    for validation) and metrics.csv, the results' tables and inference's masks mixed them up or
    overwrote one; the checker passed the root. The scan names both folders."""
    import shutil

    from pam_monai.data import check_dataset, get_spec

    real = shared_data / "cityscapes" / "frankfurt_000000_000294_small"
    for city, frame in [("aachen", "f_000001"), ("bochum", "f_000001"), ("bremen", "f_000002")]:
        for top, ending in (("leftImg8bit", "_leftImg8bit.png"), ("gtFine", "_gtFine_labelIds.png")):
            folder = tmp_path / top / "train" / city if layout == "published" else tmp_path / city
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(real / ("frankfurt_000000_000294" + ending), folder / (frame + ending))
    report = check_dataset(get_spec("cityscapes"), tmp_path)
    assert not report.ok
    where = (
        "leftImg8bit/train/aachen, leftImg8bit/train/bochum" if layout == "published" else "aachen, bochum"
    )
    assert [str(p) for p in report.problems] == [
        f"f_000001: {where}: frame name in 2 folders: cases are named by their frame, so they would overwrite "
        "each other's rows and masks; rename all but one (e.g. <city>_<name>)"
    ]


def test_isles22_mask_through_the_nifti_reader(shared_data):
    mask, affine = load_nifti(
        shared_data / "isles2022" / "sub-strokecase0009" / "sub-strokecase0009_ses-0001_msk.nii.gz"
    )
    assert mask.shape == (112, 112, 73) and affine.shape == (4, 4)
    assert check_label_values(mask, (0, 1)) is None
    assert int((mask == 1).sum()) == 523


def test_real_brats_as_own_data_gives_the_brats_readers_facts(brats_root, tmp_path):
    """The two real BraTS 2018 cases in the nnU-Net v2 raw layout (links, nothing copied):
    the own-data path sees the same enhancing tumour as the BRATS reader, and preprocesses the
    case to the same arrays at the same crop."""
    from pam_monai.data import get_spec, scan_cases

    root = tmp_path / "Dataset518_BraTS2018"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    modalities = ("flair", "t1", "t1ce", "t2")
    for case in BRATS_FACTS:
        for c, m in enumerate(modalities):
            (root / "imagesTr" / f"{case}_{c:04d}.nii.gz").symlink_to(
                brats_root / case / f"{case}_{m}.nii.gz"
            )
        (root / "labelsTr" / f"{case}.nii.gz").symlink_to(brats_root / case / f"{case}_seg.nii.gz")
    labels = {"background": 0, "necrosis": 1, "edema": 2, "enhancing tumour": 4}
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": dict(enumerate(modalities)), "labels": labels, "file_ending": ".nii.gz"})
    )
    spec = get_spec("nnunet", root=root, crop_size=160)
    assert get_spec("nnunet", root=root).crop_size == (240, 240)  # the default: the whole 240 x 240 slice
    report = check_dataset(spec, root, foreground_label="enhancing tumour")
    assert report.ok, report.format()
    for case, (voxels, slices, _) in BRATS_FACTS.items():
        summary = report.summary(case)
        assert (summary.foreground, summary.foreground_slices) == (voxels, slices)
        assert summary.shape == (4, 160, 160, 155)
    item = next(c for c in scan_cases(spec, root).cases if c.case == "Brats18_2013_2_1").to_item()
    ours = preprocess_case(spec, item, "enhancing tumour")
    folder = brats_root / "Brats18_2013_2_1"
    theirs = preprocess_case(
        "brats",
        {
            "case": "Brats18_2013_2_1",
            "image": [str(folder / f"Brats18_2013_2_1_{m}.nii.gz") for m in modalities],
            "label": str(folder / "Brats18_2013_2_1_seg.nii.gz"),
        },
    )
    np.testing.assert_array_equal(ours["image"], theirs["image"])
    np.testing.assert_array_equal(ours["label"], theirs["label"])


def test_inference_into_a_brats_case_folder_refuses_to_overwrite_its_label(brats_root, tmp_path):
    """A BraTS case folder holds the ground truth <case>_seg.nii.gz, the very name of the masks:
    inference with --output_dir at that folder must not write over the label."""
    import shutil

    import torch

    from pam_monai.engines.infer import CasePredictor, find_inference_cases

    root = tmp_path / "brats"
    shutil.copytree(brats_root / "Brats18_2013_2_1", root / "Brats18_2013_2_1")
    case_dir = root / "Brats18_2013_2_1"
    label = case_dir / "Brats18_2013_2_1_seg.nii.gz"
    before = label.read_bytes()
    items = find_inference_cases("brats", root)

    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x[:, :1]) - 1

    with pytest.raises(ValueError, match="refusing to overwrite .*Brats18_2013_2_1_seg.nii.gz"):
        CasePredictor(Zero(), items, "brats", str(case_dir)).run()
    assert label.read_bytes() == before


def test_inference_refuses_a_real_segmentation_given_as_a_modality(brats_root, tmp_path):
    """Brats18_2013_2_1's seg (int16, labels 0, 1, 2, 4) in place of its T1: inference names the file and
    writes nothing, rather than segmenting a label map; the other case's real images pass."""
    import torch

    from pam_monai.engines.infer import CasePredictor, find_inference_cases

    root = tmp_path / "cases"
    for case in BRATS_FACTS:
        (root / case).mkdir(parents=True)
        for m in ("flair", "t1", "t1ce", "t2"):
            (root / case / f"{case}_{m}.nii.gz").symlink_to(brats_root / case / f"{case}_{m}.nii.gz")
    t1 = root / "Brats18_2013_2_1" / "Brats18_2013_2_1_t1.nii.gz"
    t1.unlink()
    t1.symlink_to(brats_root / "Brats18_2013_2_1" / "Brats18_2013_2_1_seg.nii.gz")

    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x[:, :1]) - 1

    out = tmp_path / "out"
    predictor = CasePredictor(Zero(), find_inference_cases("brats", root), "brats", str(out))
    with pytest.raises(ValueError) as e:
        predictor.run()
    assert str(e.value).splitlines()[1:] == [
        "Brats18_2013_2_1: Brats18_2013_2_1_t1.nii.gz: holds only 4 distinct values (0, 1, 2, 4), as a label map "
        "or mask does, not an image: give the t1 image (the segmentation or a mask in its place?)"
    ]
    assert not out.exists()


def test_inference_refuses_real_cityscapes_labels_given_as_frames(shared_data, tmp_path):
    """The frame's gtFine_color (RGBA, 14 colours: it reads as an RGB image) and its labelIds (grey) in
    place of leftImg8bit: named, with what to give instead, and nothing written; the real frames pass."""
    import torch

    from pam_monai.engines.infer import CasePredictor, find_inference_cases

    real = shared_data / "cityscapes"
    city = tmp_path / "cases" / "leftImg8bit" / "val" / "frankfurt"
    city.mkdir(parents=True)
    given = {
        "frankfurt_000001_058914": real
        / "frankfurt_000001_058914"
        / "frankfurt_000001_058914_gtFine_color.png",
        "frankfurt_000000_000294": real
        / "frankfurt_000000_000294_small"
        / "frankfurt_000000_000294_gtFine_labelIds.png",
    }
    for frame, path in given.items():
        (city / f"{frame}_leftImg8bit.png").symlink_to(path)

    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x[:, :1]) - 1

    out = tmp_path / "out"
    predictor = CasePredictor(
        Zero(), find_inference_cases("cityscapes", tmp_path / "cases"), "cityscapes", str(out)
    )
    with pytest.raises(ValueError) as e:
        predictor.run()
    assert sorted(str(e.value).splitlines()[1:]) == [
        "frankfurt_000000_000294: frankfurt_000000_000294_leftImg8bit.png: expected an RGB image, got shape "
        "(128, 256) (a label map, e.g. gtFine_labelIds, given for the camera frame?)",
        "frankfurt_000001_058914: frankfurt_000001_058914_leftImg8bit.png: holds only 14 colours, as a colour "
        "drawing of labels does (gtFine_color), not a photograph: give the camera frame (leftImg8bit)",
    ]
    assert not out.exists()
    for frame in given:  # the real frames
        (city / f"{frame}_leftImg8bit.png").unlink()
        suffix = "" if frame.endswith("058914") else "_small"
        (city / f"{frame}_leftImg8bit.png").symlink_to(real / f"{frame}{suffix}" / f"{frame}_leftImg8bit.png")
    items = find_inference_cases("cityscapes", tmp_path / "cases")
    assert len(CasePredictor(Zero(), items, "cityscapes", str(out)).run()) == 2


def test_rerun_names_the_masks_it_did_not_rewrite(shared_data, tmp_path, caplog):
    """Both real frames segmented, then one of them broken and the run repeated with --skip_invalid
    into the same folder: the broken frame's mask of the first run stays, and score or ensemble would
    read it with the new ones, so the run names it (and a clean re-run names nothing)."""
    import logging

    import torch

    from pam_monai.engines.infer import CasePredictor, find_inference_cases

    real = shared_data / "cityscapes"
    city = tmp_path / "cases" / "leftImg8bit" / "val" / "frankfurt"
    city.mkdir(parents=True)
    for frame, folder in (("frankfurt_000001_058914", ""), ("frankfurt_000000_000294", "_small")):
        (city / f"{frame}_leftImg8bit.png").symlink_to(real / f"{frame}{folder}" / f"{frame}_leftImg8bit.png")

    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x[:, :1]) - 1

    def run(**options):
        items = find_inference_cases("cityscapes", tmp_path / "cases", options.get("skip_invalid", False))
        return CasePredictor(Zero(), items, "cityscapes", str(tmp_path / "out"), **options).run()

    run(save_probabilities=True)
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        run(save_probabilities=True)
    assert "did not segment" not in caplog.text
    big = city / "frankfurt_000001_058914_leftImg8bit.png"
    big.unlink()
    big.write_bytes(b"not a png")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        assert [p.name for p in run(skip_invalid=True)] == ["frankfurt_000000_000294_vehicles.png"]
    assert (
        "holds 2 mask or probability file(s) of cases this run did not segment (frankfurt_000001_058914_prob.npy, "
        "frankfurt_000001_058914_vehicles.png): an earlier run's" in caplog.text
    )
    assert "frankfurt_000000_000294_prob.npy is from an earlier run and was not rewritten" in caplog.text


def test_inference_segments_lgg_cases_and_refuses_one_name_twice(brats_root, tmp_path):
    """HGG alone is the paper's training set, not a limit of inference: a case under LGG/ is found
    beside the HGG/ one (it was left out without a word), and a case ID under both would get one
    mask name for two cases: refused, naming both folders."""
    from pam_monai.engines.infer import find_inference_cases

    root = tmp_path / "cases"
    for grade, case in (("HGG", "Brats18_TCIA05_396_1"), ("LGG", "Brats18_2013_2_1")):
        (root / grade).mkdir(parents=True, exist_ok=True)
        (root / grade / case).symlink_to(brats_root / case)
    assert sorted(it["case"] for it in find_inference_cases("brats", root)) == sorted(BRATS_FACTS)
    (root / "HGG" / "Brats18_2013_2_1").symlink_to(brats_root / "Brats18_2013_2_1")
    with pytest.raises(ValueError) as e:
        find_inference_cases("brats", root)
    assert str(e.value).splitlines()[1:] == [
        f"Brats18_2013_2_1: {root / 'HGG' / 'Brats18_2013_2_1'}, {root / 'LGG' / 'Brats18_2013_2_1'}: two cases of "
        "one name, whose masks would have one name: rename one"
    ]
    assert [it["case"] for it in find_inference_cases("brats", root, skip_invalid=True)] == [
        "Brats18_TCIA05_396_1"
    ]


def test_score_finds_the_labels_of_lgg_cases(brats_root, tmp_path, caplog):
    """Masks of a case under LGG/ (which inference segments) are scored against its label, not refused
    as a case without one; the enhancing tumour itself as the mask scores IoU 1. A mask for HGG alone
    does not ask for the LGG cases' masks."""
    import logging

    from pam_monai.engines.score import score_predictions

    root = tmp_path / "brats"
    for grade, case in (("HGG", "Brats18_TCIA05_396_1"), ("LGG", "Brats18_2013_2_1")):
        (root / grade).mkdir(parents=True)
        (root / grade / case).symlink_to(brats_root / case)
    preds = tmp_path / "preds"
    preds.mkdir()
    for case in BRATS_FACTS:
        seg = nib.load(brats_root / case / f"{case}_seg.nii.gz")
        mask = (np.asanyarray(seg.dataobj) == 4).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, seg.affine), preds / f"{case}_seg.nii.gz")
    summary = score_predictions(preds, "brats", root, tmp_path / "scores")
    assert summary["count"] == 2 and summary["iou"]["mean"] == 1.0
    (preds / "Brats18_2013_2_1_seg.nii.gz").unlink()
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        assert score_predictions(preds, "brats", root, tmp_path / "scores")["count"] == 1
    assert "have no mask" not in caplog.text


@pytest.mark.parametrize("label_map", [None, False, True])
def test_score_refuses_a_probability_map_given_as_a_mask(brats_root, tmp_path, label_map):
    """A <case>_prob map saved under a mask's name: --label_map false counted every voxel above 0 as
    foreground (the whole crop), and the default's hint called it a label map; refused by name in
    every reading."""
    from pam_monai.engines.score import score_predictions

    case = "Brats18_2013_2_1"
    seg = nib.load(brats_root / case / f"{case}_seg.nii.gz")
    prob = np.where(np.asanyarray(seg.dataobj) == 4, 0.9, 0.1).astype(np.float32)
    (tmp_path / "preds").mkdir()
    nib.save(nib.Nifti1Image(prob, seg.affine), tmp_path / "preds" / f"{case}_seg.nii.gz")
    with pytest.raises(
        ValueError, match=r"_seg.nii.gz: non-integer values \(0.1, 0.9\), where a mask holds integer"
    ):
        score_predictions(tmp_path / "preds", "brats", brats_root, tmp_path / "scores", label_map=label_map)
    assert not (tmp_path / "scores").exists()


def test_bundle_refusal_of_isles22_layout_does_not_advise_a_missing_folder(shared_data, tmp_path):
    """The ISLES'22 case is not in the ISLES 2018 layout: the bundles' refusal must not advise
    pointing --dataset_dir at a missing or empty folder, which the bundles refuse as well."""
    import shutil

    from pam_monai.engines.data import prepare_data

    root = tmp_path / "isles2022"
    shutil.copytree(shared_data / "isles2022", root)
    with pytest.raises(ValueError) as err:
        prepare_data("isles", str(root), "", synthetic_dir=str(tmp_path / "s"), stand_in=False)
    msg = str(err.value)
    assert "sub-strokecase0009" in msg and "TRAINING/case_<n>" in msg
    assert "at a missing or empty folder for a synthetic stand-in" not in msg
    assert "--task nnunet" in msg
    assert (
        f"look like ISLES 2022 (MRI, BIDS), not ISLES 2018 (CT perfusion): convert them with python -m pam_monai convert_isles22 --root {root}"
        in msg
    )


def test_isles22_case_converts_to_own_data(shared_data, tmp_path):
    """The real ISLES'22 case through convert_isles22: DWI and ADC copied as shipped, the mask as
    label 'lesion', FLAIR (another grid) left out; the result reads as own data (523 voxels)."""
    from pam_monai.data import get_spec
    from pam_monai.data.isles22 import convert_isles22
    from pam_monai.engines.data import prepare_data

    case = shared_data / "isles2022" / "sub-strokecase0009"
    out = convert_isles22(shared_data / "isles2022", tmp_path / "isles22", progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "DWI", "1": "ADC"} and meta["labels"] == {
        "background": 0,
        "lesion": 1,
    }
    assert meta["numTraining"] == 1
    assert (out / "imagesTr" / "sub-strokecase0009_0000.nii.gz").read_bytes() == (
        case / "sub-strokecase0009_ses-0001_dwi.nii.gz"
    ).read_bytes()
    assert (out / "imagesTr" / "sub-strokecase0009_0001.nii.gz").read_bytes() == (
        case / "sub-strokecase0009_ses-0001_adc.nii.gz"
    ).read_bytes()
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "sub-strokecase0009_0000.nii.gz",
        "sub-strokecase0009_0001.nii.gz",
    ]
    spec = get_spec("nnunet", root=out)
    assert spec.channels == ("DWI", "ADC")
    with pytest.raises(
        ValueError, match="fold"
    ):  # one case cannot fill five folds: named, as for any own set
        prepare_data(spec, str(out), "", synthetic_dir=str(tmp_path / "s"), stand_in=False)
    label = nib.load(str(out / "labelsTr" / "sub-strokecase0009.nii.gz")).get_fdata()
    assert int((label > 0).sum()) == 523


def test_own_data_inference_on_the_raw_isles22_folder_names_the_converter(shared_data, tmp_path):
    """A model trained on the converted ISLES'22 set (--task nnunet) given the raw BIDS folder: no
    <case>_0000 image there, only the case's folder; named with where the images go and the
    converter, not a bare "no case found" (nor advice to skip the invalid cases)."""
    from pam_monai.data import get_spec
    from pam_monai.data.isles22 import convert_isles22
    from pam_monai.engines.infer import find_inference_cases

    spec = get_spec("nnunet", root=convert_isles22(shared_data / "isles2022", tmp_path / "c", progress=False))
    raw = shared_data / "isles2022"
    with pytest.raises(ValueError) as e:
        find_inference_cases(spec, raw)
    assert str(e.value).splitlines() == [
        f"nnunet: no case found in {raw} (expected the published layout, see the README)",
        f"isles2022: {raw}: no <case>_0000.nii.gz image, only folders (sub-strokecase0009): the images lie in this "
        "folder itself, one file per channel, <case>_0000.nii.gz, <case>_0001.nii.gz, ...; these look like ISLES "
        f"2022 (BIDS): convert them with python -m pam_monai convert_isles22 --root {raw} --output DIR and use DIR",
    ]


def test_datalist_entries_without_a_case_get_the_layout_s_case_id(brats_root, shared_data, tmp_path):
    """An external test list in MONAI's decathlon format has no 'case': its entries are named as
    inference names their masks (and score finds them), not after their first file, so evaluation's
    metrics.csv rows read Brats18_2013_2_1, not Brats18_2013_2_1_flair.nii.gz."""
    from pam_monai.data import get_split
    from pam_monai.data.isles22 import convert_isles22

    def entry(files, label):
        return {"image": [str(f) for f in files], "label": str(label)}

    brats = {
        "test": [
            entry(
                [brats_root / c / f"{c}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")],
                brats_root / c / f"{c}_seg.nii.gz",
            )
            for c in BRATS_FACTS
        ]
    }
    assert [e["case"] for e in get_split("brats", brats, "test")] == list(BRATS_FACTS)
    frame = shared_data / "cityscapes" / "frankfurt_000001_058914" / "frankfurt_000001_058914"
    city = {"test": [entry([f"{frame}_leftImg8bit.png"], f"{frame}_gtFine_labelIds.png")]}
    assert [e["case"] for e in get_split("cityscapes", city, "test")] == ["frankfurt_000001_058914"]
    own = convert_isles22(shared_data / "isles2022", tmp_path / "isles22", progress=False)
    images = sorted((own / "imagesTr").iterdir())
    isles22 = {"test": [entry(images, own / "labelsTr" / "sub-strokecase0009.nii.gz")]}
    assert [e["case"] for e in get_split("nnunet", isles22, "test", root=own)] == ["sub-strokecase0009"]
    assert get_split("brats", {"test": [{**brats["test"][0], "case": "mine"}]}, "test")[0]["case"] == "mine"


def test_empty_split_of_the_two_real_brats_cases_says_why_and_how_to_fix(brats_root, tmp_path):
    """Two cases cannot fill 5 folds' train, validation and test splits: the refusal says how
    many cases there are, in which folds, and names data_list_file_path."""
    from pam_monai.engines.data import prepare_data

    with pytest.raises(ValueError) as err:
        prepare_data(
            "brats", str(brats_root), "", synthetic_dir=str(tmp_path / "s"), stand_in=False, check=False
        )
    msg = str(err.value)
    assert "split of fold 0 is empty" in msg and "2 case(s)" in msg and "data_list_file_path" in msg


def test_cityscapes_frames_outside_the_split_folders_are_refused_with_the_layout(shared_data):
    """`check` accepts the real frames in plain folders, but the splits need leftImg8bit/{train,val}/<city>:
    the refusal names that layout instead of only 'found []'."""
    with pytest.raises(ValueError) as err:
        build_datalist("cityscapes", shared_data / "cityscapes", seed=0)
    msg = str(err.value)
    assert "2 frame(s)" in msg and "leftImg8bit/{train,val}/<city>" in msg


def test_cityscapes_evaluation_reads_val_frames_without_train_ones(shared_data, tmp_path):
    """The two real frames under leftImg8bit/val (a download of the val set alone): evaluation reads
    its test split only and gets both frames (it was refused for want of 'train' cities to hold one
    out for validation); training still needs them, and says so."""
    from pam_monai.engines import prepare_data

    real = shared_data / "cityscapes"
    root = tmp_path / "cityscapes"
    for frame, folder in (("frankfurt_000001_058914", ""), ("frankfurt_000000_000294", "_small")):
        for kind, name in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")):
            (root / kind / "val" / "frankfurt").mkdir(parents=True, exist_ok=True)
            (root / kind / "val" / "frankfurt" / f"{frame}_{name}.png").symlink_to(
                real / f"{frame}{folder}" / f"{frame}_{name}.png"
            )
    data = prepare_data("cityscapes", root, "", splits=["test"], stand_in=False)
    assert sorted(it["case"] for it in data["test"]) == ["frankfurt_000000_000294", "frankfurt_000001_058914"]
    assert data["train"] == data["val"] == [] and not data["synthetic"]
    with pytest.raises(ValueError, match="need 'train' frames of at least two cities"):
        prepare_data("cityscapes", root, "", stand_in=False)


def test_skip_invalid_segments_new_cases_that_have_no_label(brats_root, tmp_path):
    """New cases come without a seg: --skip_invalid took the scan's "missing label" for an input
    problem and left every such case out (a real case beside a broken one: nothing to segment).
    Now the unlabelled case is segmented and the broken one named."""
    from pam_monai.engines.infer import find_inference_cases

    root = tmp_path / "new"
    case = "Brats18_2013_2_1"
    (root / case).mkdir(parents=True)
    for m in ("flair", "t1", "t1ce", "t2"):
        (root / case / f"{case}_{m}.nii.gz").symlink_to(brats_root / case / f"{case}_{m}.nii.gz")
    (root / "broken").mkdir()
    (root / "broken" / "broken_flair.nii.gz").symlink_to(brats_root / case / f"{case}_flair.nii.gz")
    assert [it["case"] for it in find_inference_cases("brats", root, skip_invalid=True)] == [case]


def test_cityscapes_inference_segments_the_test_split(shared_data, tmp_path):
    """The official test frames (leftImg8bit/test, no gtFine) are what one segments: inference looked
    in train and val only and refused the folder ("no frames of split(s) train, val")."""
    from pam_monai.engines.infer import find_inference_cases

    real = shared_data / "cityscapes"
    city = tmp_path / "cityscapes" / "leftImg8bit" / "test" / "frankfurt"
    city.mkdir(parents=True)
    for frame, folder in (("frankfurt_000001_058914", ""), ("frankfurt_000000_000294", "_small")):
        (city / f"{frame}_leftImg8bit.png").symlink_to(real / f"{frame}{folder}" / f"{frame}_leftImg8bit.png")
    items = find_inference_cases("cityscapes", tmp_path / "cityscapes")
    assert [it["case"] for it in items] == ["frankfurt_000000_000294", "frankfurt_000001_058914"]


def test_own_data_label_map_in_an_image_channel_is_named_in_a_warning(shared_data, tmp_path):
    """The converted ISLES'22 case with its lesion mask copied over ADC: own data may carry mask
    channels (nnU-Net's noNorm), so not refused, but a channel normalised as an image (ADC: z-score)
    that holds 2 values is named, as check and inference print their warnings."""
    import shutil

    from pam_monai.data.isles22 import convert_isles22
    from pam_monai.engines.infer import input_problems

    own = convert_isles22(shared_data / "isles2022", tmp_path / "isles22", progress=False)
    adc = own / "imagesTr" / "sub-strokecase0009_0001.nii.gz"
    shutil.copy(own / "labelsTr" / "sub-strokecase0009.nii.gz", adc)
    report = check_dataset("nnunet", own)
    expected = (
        "sub-strokecase0009: sub-strokecase0009_0001.nii.gz: holds only 2 distinct values (0, 1), as a label map "
        "or mask does, not an image: give the ADC image (the segmentation or a mask in its place?); a mask "
        "channel is named noNorm in dataset.json"
    )
    assert report.ok and [str(w) for w in report.warnings] == [expected]
    from pam_monai.data import get_spec

    item = {"case": "sub-strokecase0009", "image": sorted(str(p) for p in (own / "imagesTr").iterdir())}
    problems, warnings, case = input_problems(get_spec("nnunet", root=own), item)
    assert problems == [] and warnings == [expected] and case is not None


def test_check_of_the_isles22_test_images(shared_data, tmp_path, capsys):
    """The real ISLES'22 images without their mask (a test case, converted into imagesTs) are
    checked with ``check --unlabelled``: shape, 2 mm spacing and orientation, labels not checked."""
    import shutil

    from pam_monai.data.isles22 import convert_isles22

    source = tmp_path / "raw"
    shutil.copytree(shared_data / "isles2022", source)
    test = source / "sub-strokecase0010"
    test.mkdir()
    for kind in ("dwi", "adc"):
        shutil.copyfile(
            source / "sub-strokecase0009" / f"sub-strokecase0009_ses-0001_{kind}.nii.gz",
            test / f"sub-strokecase0010_ses-0001_{kind}.nii.gz",
        )
    root = convert_isles22(source, tmp_path / "converted", progress=False)
    cli(["check", "--root", str(root), "--unlabelled"])
    out = capsys.readouterr().out
    assert "sub-strokecase0010  ok      2x112x112x73" in out and "sub-strokecase0009" not in out, out
    assert "voxel spacing (mm): 2x2x2 (1 case)" in out and "orientation (affine axis codes): LAS 1" in out, (
        out
    )
    assert f"NOTE labels not checked: {root / 'imagesTs'} was checked as an unlabelled set" in out, out
