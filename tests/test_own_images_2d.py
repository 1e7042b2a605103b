"""Own 2-D images in the nnU-Net layout (PNG/BMP/TIFF): one colour file or grey files per case,
resized to one size, predictions resized back and scored on each image's pixels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SMALL_RUN, error_chain, verify_bundle
from PIL import Image

from pam_monai.data import (
    check_dataset,
    get_preprocess_transforms,
    get_spec,
    preprocess_case,
    scan_cases,
    synth,
)
from pam_monai.engines.data import CaseDataset

SMALL = {**SMALL_RUN, "batch_size": 4}


@pytest.fixture(scope="module")
def colour_root(tmp_path_factory) -> Path:
    return synth("nnunet", tmp_path_factory.mktemp("own2d") / "Dataset902_Lesion", cases=6, two_d=True)


def grey_set(root: Path, cases: int = 4) -> Path:
    """Two grey channels (16-bit ultrasound-like and an 8-bit map) and palette label PNGs."""
    rng = np.random.default_rng(1)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for i in range(cases):
        h, w = 70 + 3 * i, 60
        Image.fromarray(rng.integers(1, 60000, (h, w)).astype(np.uint16)).save(
            root / "imagesTr" / f"US{i}_0000.png"
        )
        Image.fromarray(rng.integers(0, 255, (h, w)).astype(np.uint8)).save(
            root / "imagesTr" / f"US{i}_0001.png"
        )
        label = np.zeros((h, w), np.uint8)
        label[20:40, 10:30], label[50:55, 40:50] = 1, 2
        pal = Image.fromarray(label, "P")
        pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)  # shown red / green; values 1 / 2
        pal.save(root / "labelsTr" / f"US{i}.png")
    meta = {
        "channel_names": {"0": "US", "1": "rescale_to_0_1"},
        "labels": {"background": 0, "cyst": 1, "vessel": 2},
        "file_ending": ".png",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_colour_images_are_one_file_of_three_channels(colour_root):
    spec = get_spec("nnunet", root=colour_root)
    assert not spec.volumetric and spec.channels == ("R", "G", "B") and spec.image_files == 1
    # median size of 6 images around 90 x 84 (+-8), rounded up to 16; the width is flipped
    assert spec.crop_size == spec.resize == (96, 96) and spec.flip_axis == -1 and spec.file_ending == ".png"
    assert get_spec("nnunet", root=colour_root, crop_size=64).resize == (64, 64)
    scan = scan_cases(spec, colour_root)
    assert not scan.problems and len(scan.cases) == 6
    item = scan.cases[0].to_item()
    assert Path(item["image"]).name == "SYN_001_0000.png" and Path(item["label"]).name == "SYN_001.png"
    report = check_dataset("nnunet", colour_root)
    assert report.ok and report.summary("SYN_001").shape == (3, 96, 96), report.format()
    pre = preprocess_case(spec, item)
    assert pre["image"].shape == (3, 96, 96) and pre["label"].shape == (1, 96, 96)
    original = np.asarray(Image.open(item["label"]))
    assert pre["original_shape"] == original.shape and pre["label"].sum() > 0
    ref = get_preprocess_transforms(spec)(dict(item))  # the MONAI chain, the readable reference
    np.testing.assert_allclose(np.asarray(ref["image"]), pre["image"], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(ref["label"]), pre["label"])


def test_grey_files_are_one_channel_each_and_palette_labels_their_indices(tmp_path):
    root = grey_set(tmp_path / "Dataset903_US")
    spec = get_spec("nnunet", root=root)
    assert spec.image_files == 2 and spec.crop_size == (80, 64)  # median 74.5 x 60, rounded up
    # "US": the z-score, over all pixels for 2-D images
    assert [n.scheme for n in spec.channel_norms] == ["zscore_all", "rescale_to_0_1"]
    report = check_dataset(spec, root, foreground_label="cyst")
    assert report.ok, report.format()
    assert report.summary("US0").foreground == 400  # the palette indices are the label values
    item = scan_cases(spec, root).cases[1].to_item()
    pre = preprocess_case(spec, item, foreground_label="vessel")
    ref = get_preprocess_transforms(spec, foreground_label="vessel")(dict(item))
    np.testing.assert_allclose(np.asarray(ref["image"]), pre["image"], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(ref["label"]), pre["label"])
    assert pre["image"].shape == (2, 80, 64) and 0 <= pre["image"][1].min() and pre["image"][1].max() <= 1


def test_2d_layout_mistakes_are_named(colour_root, tmp_path):
    root = Path(shutil.copytree(colour_root, tmp_path / colour_root.name))
    shutil.copy(root / "imagesTr" / "SYN_002_0000.png", root / "imagesTr" / "SYN_002_0001.png")
    Image.open(root / "labelsTr" / "SYN_003.png").resize((40, 40)).save(root / "labelsTr" / "SYN_003.png")
    report = check_dataset("nnunet", root)
    text = report.format()
    assert "channel 0001, but the data set's 3 channels are one colour image <case>_0000" in text
    assert "SYN_003.png" in text and "differs" in text
    # masks saved for viewing (0 / 255), as ISIC and Kvasir ship them
    mask = np.asarray(Image.open(root / "labelsTr" / "SYN_004.png"))
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(root / "labelsTr" / "SYN_004.png")
    assert (
        'a 0 / 255 mask: name 255 in dataset.json\'s labels (e.g. "lesion": 255)'
        in check_dataset("nnunet", root).format()
    )
    # labels drawn in colour (an RGB label PNG): named, with what nnU-Net reads instead
    label = np.asarray(Image.open(root / "labelsTr" / "SYN_002.png"))
    Image.fromarray(np.stack([label * 255] * 3, -1).astype(np.uint8)).save(root / "labelsTr" / "SYN_002.png")
    assert (
        "SYN_002.png: expected a single-channel label map, got shape"
        in check_dataset("nnunet", root).format()
    )
    assert (
        "a colour drawing of the labels: store each pixel's label value"
        in check_dataset("nnunet", root).format()
    )
    # a colour image where dataset.json names two channels
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "R", "1": "G"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match=r"SYN_001_0000.png: a colour image \(3 channels\), but .* names 2 channel"
    ):
        get_spec("nnunet", root=root)
    # grey files expected, a colour one found
    grey = grey_set(tmp_path / "Dataset904_US")
    shutil.copy(root / "imagesTr" / "SYN_001_0000.png", grey / "imagesTr" / "US1_0001.png")
    report = check_dataset("nnunet", grey)
    assert any("US1_0001.png" in str(p) and "expected a grey image" in str(p) for p in report.problems)


def test_a_palette_image_among_grey_ones_is_named_with_the_fix(tmp_path):
    """Some tools save a grey picture as a palette PNG (grey colours): it reads as RGB, and the
    check says to save it as grey, as it says to save a grey one among colour ones as RGB."""
    grey = grey_set(tmp_path / "Dataset904_US")
    path = grey / "imagesTr" / "US1_0001.png"
    Image.open(path).convert("P").save(path)
    report = check_dataset("nnunet", grey)
    assert [str(p) for p in report.problems] == [
        "US1: US1_0001.png: expected a grey image, got shape (73, 60, 3) (a colour or palette image among grey "
        "ones: save it as grey, e.g. PIL's image.convert('L'))"
    ]


def test_bundle_trains_evaluates_and_infers_on_2d_images(colour_root, tmp_path):
    from monai.bundle import run

    configs = ROOT / "bundles" / "brats_rfna" / "configs"
    common = {"bundle_root": str(tmp_path / "run"), "dataset_dir": str(colour_root), "task": "nnunet"}
    run("training", config_file=str(configs / "train.json"), logging_file=False, **common, **SMALL)
    record = json.loads((tmp_path / "run" / "models" / "model.json").read_text())["run"]
    assert record["crop_size"] == [96, 96] and record["in_channels"] == 3
    assert record["dataset_json"]["file_ending"] == ".png" and record["dataset_json"]["image_files"] == 1

    # evaluation scores each image on its own pixels: the prediction is resized back
    spec = get_spec("nnunet", root=colour_root)
    sample = CaseDataset([scan_cases(spec, colour_root).cases[0].to_item()], spec)[0]
    assert sample["restore"] == "resize" and tuple(sample["label_full"].shape[1:]) != (96, 96)
    evaluate = [str(configs / "train.json"), str(configs / "evaluate.json")]
    run("evaluating", config_file=evaluate, logging_file=False, **common, **SMALL)
    rows = (tmp_path / "run" / "eval" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and all(np.isfinite(float(r.split(",")[1])) for r in rows[1:])

    # masks at each input's size, 0 / 1; from images alone, without the training data
    nets = {"network_options": SMALL["network_options"]}
    run("inferring", config_file=str(configs / "inference.json"), logging_file=False, **common, **nets)
    mask = np.asarray(Image.open(tmp_path / "run" / "predictions" / "SYN_007_seg.png"))
    image = Image.open(colour_root / "imagesTs" / "SYN_007_0000.png")
    assert mask.shape == image.size[::-1] and set(np.unique(mask)) <= {0, 1}
    folder = tmp_path / "incoming"
    folder.mkdir()
    image.resize((130, 70)).save(folder / "NEW_0000.png")
    no_data = {**common, "dataset_dir": str(tmp_path / "no_such_data")}
    out = tmp_path / "p2"
    run("inferring", config_file=str(configs / "inference.json"), logging_file=False, **no_data, **nets,
        input_dir=str(folder), output_dir=str(out), save_probabilities=True)  # fmt: skip
    new_mask = np.asarray(Image.open(out / "NEW_seg.png"))
    prob = np.load(out / "NEW_prob.npy")  # resized back as the mask is: prob > 0.5 is the mask
    assert new_mask.shape == prob.shape == (70, 130) and prob.dtype == np.float32
    np.testing.assert_array_equal(prob > 0.5, new_mask > 0)
    # a data set folder with dataset.json and imagesTs only (no training images)
    ts_only = tmp_path / "ts_only"
    (ts_only / "imagesTs").mkdir(parents=True)
    shutil.copy(colour_root / "dataset.json", ts_only / "dataset.json")
    shutil.copy(colour_root / "imagesTs" / "SYN_007_0000.png", ts_only / "imagesTs" / "SYN_007_0000.png")
    run("inferring", config_file=str(configs / "inference.json"), logging_file=False, **nets,
        **{**common, "dataset_dir": str(ts_only)}, output_dir=str(tmp_path / "p_ts"))  # fmt: skip
    assert (tmp_path / "p_ts" / "SYN_007_seg.png").is_file()
    # a grey image for a colour model is refused by name
    image.convert("L").save(folder / "GREY_0000.png")
    with pytest.raises(Exception) as err:
        run("inferring", config_file=str(configs / "inference.json"), logging_file=False, **no_data, **nets,
            input_dir=str(folder), output_dir=str(tmp_path / "p3"))  # fmt: skip
    grey = f"GREY_0000.png: expected an RGB image, got shape {image.size[::-1]} (a grey image among colour ones: "
    assert any(
        grey + "save it as RGB, e.g. PIL's image.convert('RGB'))" in m for m in error_chain(err.value)
    ), error_chain(err.value)


def test_own_bundle_and_experiment_on_2d_images(colour_root, tmp_path):
    from pam_monai.bundle_templates.own_data import own_data_bundle
    from pam_monai.experiments import run_experiment

    bundle = own_data_bundle(colour_root, "fpa", tmp_path / "lesion_fpa")
    meta = verify_bundle(bundle / "configs", SMALL["network_options"])
    assert meta["data_type"] == "png" and "z-score over all of each case's values" in meta["image_classes"]
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [96, 96]
    readme = (bundle / "docs" / "README.md").read_text()
    assert "imagesTr/<case>_XXXX.png" in readme and "images resized to 96x96" in readme

    out = tmp_path / "exp"
    run_experiment(dataset="nnunet", networks="fpa", output=str(out), figures=False,
                   dataset_dir=str(colour_root), **SMALL)  # fmt: skip
    results = (out / "results.md").read_text()
    assert "on the image's own pixels" in results and "HD95 (px)" in results


def test_2d_label_among_images_not_renamed_onto_its_image(colour_root, tmp_path):
    """A label copied into imagesTr/ (SYN_001.png beside SYN_001_0000.png) is not told to be
    renamed SYN_001_0000.png: that would overwrite the case's image."""
    stray = Path(shutil.copytree(colour_root, tmp_path / "stray"))
    shutil.copy(stray / "labelsTr" / "SYN_001.png", stray / "imagesTr" / "SYN_001.png")
    report = check_dataset("nnunet", stray)
    problem = next(str(p) for p in report.problems if "SYN_001.png: not an image file name" in str(p))
    assert "rename it" not in problem
    assert "SYN_001_0000.png exists" in problem and "labelsTr/" in problem


def test_2d_review_cases(colour_root, tmp_path):
    """What a review with real-world 2-D sets found: names without _0000, one grey image among
    colour ones, foreground lost in the resize, upper-case file types, black pixels."""
    # ISIC-style names (no _0000): the check lists them instead of failing on the default size
    isic = Path(shutil.copytree(colour_root, tmp_path / "isic"))
    for f in (isic / "imagesTr").glob("*_0000.png"):
        f.rename(f.with_name(f.name.replace("_0000", "")))
    report = check_dataset("nnunet", isic)
    assert not report.ok and "SYN_001.png: not an image file name <case>_<XXXX>.png" in report.format()
    named = "SYN_001.png: not an image file name <case>_<XXXX>.png (channel number XXXX)"
    assert named + ": rename it SYN_001_0000.png" in [str(p) for p in report.problems]

    # one grey image sorted first: the colour layout holds (majority), the odd file is named
    mixed = Path(shutil.copytree(colour_root, tmp_path / "mixed"))
    first = mixed / "imagesTr" / "SYN_001_0000.png"
    Image.open(first).convert("L").save(first)
    report = check_dataset("nnunet", mixed)
    assert [str(p) for p in report.problems] == [
        next(
            str(p)
            for p in report.problems
            if "SYN_001_0000.png" in str(p) and "expected an RGB image" in str(p)
        )
    ]

    # foreground that vanishes in the resize is a warning that names the remedy
    tiny = Path(shutil.copytree(colour_root, tmp_path / "tiny"))
    label = tiny / "labelsTr" / "SYN_002.png"
    small = np.zeros(np.asarray(Image.open(label)).shape, np.uint8)
    small[40, 40] = 1
    Image.fromarray(small).save(label)
    report = check_dataset(get_spec("nnunet", root=tiny, crop_size=16), tiny)
    assert any("all 1 foreground pixels vanish in the resize to 16x16" in str(w) for w in report.warnings)

    # .PNG files of a .png data set are its images; a .jpg is named as a file type
    upper = Path(shutil.copytree(colour_root, tmp_path / "upper"))
    for f in [*(upper / "imagesTr").iterdir(), *(upper / "labelsTr").iterdir()]:
        f.rename(f.with_suffix(".PNG"))
    Image.open(upper / "imagesTr" / "SYN_001_0000.PNG").save(upper / "imagesTr" / "SYN_009_0000.jpg")
    report = check_dataset("nnunet", upper)
    assert report.summary("SYN_001").shape == (3, 96, 96)
    assert [str(p) for p in report.problems] == [
        "SYN_009: SYN_009_0000.jpg: file type '.jpg' is not this data set's (.png): convert it to .png"
    ], report.format()  # not "set file_ending": .jpg is read nowhere

    # photographs: the z-score runs over all pixels, so black is data (not left at 0)
    spec = get_spec("nnunet", root=colour_root)
    assert {n.scheme for n in spec.channel_norms} == {"zscore_all"}
    item = scan_cases(spec, colour_root).cases[0].to_item()
    image = np.asarray(Image.open(item["image"])).copy()
    image[:10, :10] = 0  # a black corner
    Image.fromarray(image).save(tmp_path / "black_0000.png")
    pre = preprocess_case(spec, {"case": "black", "image": str(tmp_path / "black_0000.png")})
    assert (pre["image"][:, :8, :8] < -2).all()  # far below the mean, not 0

    # RGBA images (endoscopy exports) read as RGB, by the numpy path and the MONAI chain alike
    Image.open(item["image"]).convert("RGBA").save(tmp_path / "rgba_0000.png")
    rgba = {"case": "rgba", "image": str(tmp_path / "rgba_0000.png"), "label": item["label"]}
    pre = preprocess_case(spec, rgba)
    np.testing.assert_allclose(
        np.asarray(get_preprocess_transforms(spec)(dict(rgba))["image"]), pre["image"], atol=1e-5
    )
    np.testing.assert_allclose(pre["image"], preprocess_case(spec, item)["image"], atol=1e-5)


def test_exif_orientation_is_named_by_the_checker(colour_root, tmp_path):
    """Photographs read as stored (as nnU-Net reads them); one that viewers show turned is named,
    since its mask may have been drawn on the turned view."""
    root = Path(shutil.copytree(colour_root, tmp_path / colour_root.name))
    path = root / "imagesTr" / "SYN_002_0000.png"
    with Image.open(path) as im:
        exif = Image.Exif()
        exif[0x0112] = 6
        im.save(path, exif=exif)
    report = check_dataset("nnunet", root)
    assert [(w.case, w.file) for w in report.warnings] == [("SYN_002", "SYN_002_0000.png")]
    assert "EXIF orientation 6: photo viewers show it turned 90 degrees" in report.warnings[0].message


def small_images(tmp_path: Path) -> Path:
    """Three grey 64 x 64 images with their masks: own data whose default size is 64 x 64."""
    root = tmp_path / "Dataset950_Small"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    meta = {"channel_names": {"0": "Xray"}, "labels": {"background": 0, "nodule": 1}, "numTraining": 3}
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".png"}))
    for i in range(3):
        image = np.full((64, 64), 80, np.uint8)
        image[20:40, 20:40] = 200
        Image.fromarray(image).save(root / "imagesTr" / f"x{i}_0000.png")
        Image.fromarray((image > 100).astype(np.uint8)).save(root / "labelsTr" / f"x{i}.png")
    return root


def test_a_crop_too_small_for_rfna_is_refused_by_the_bundle_command_naming_crop_size(tmp_path, monkeypatch):
    """RFNA down-samples 64x: own 64 x 64 images give a 64 x 64 crop it cannot normalise. The bundle
    command refuses it before writing anything, naming the --crop_size that fits (training from it
    failed at its first step); FPA takes that crop, and RFNA a larger one."""
    from pam_monai.cli import main

    root = small_images(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["bundle", "--dataset_dir", str(root), "--output", "small_rfna", "--network", "rfna"])
    message = str(exit_.value.code)
    assert "rfna on Dataset950_Small" in message and "[64, 64] is down-sampled 64x" in message
    assert '--crop_size "[80, 64]"' in message and not (tmp_path / "small_rfna").exists()
    main(["bundle", "--dataset_dir", str(root), "--output", "small_fpa"])
    main(["bundle", "--dataset_dir", str(root), "--output", "small_rfna", "--network", "rfna",
          "--crop_size", "[80, 64]"])  # fmt: skip
    train = json.loads((tmp_path / "small_rfna" / "configs" / "train.json").read_text())
    assert train["crop_size"] == [80, 64]


def test_an_experiment_refuses_a_crop_too_small_for_one_of_its_networks_before_any_run(tmp_path):
    """README's experiment (--networks fpa,rfna,unet) on own 64 x 64 images: refused before the
    grid's first run, naming the network and --crop_size (RFNA failed after FPA had trained)."""
    from pam_monai.experiments import run_experiment

    root = small_images(tmp_path)
    out = tmp_path / "grid"
    with pytest.raises(ValueError, match=r'rfna on Dataset950_Small.*the crop.*--crop_size "\[80, 64\]"'):
        run_experiment(dataset="nnunet", networks="fpa,rfna,unet", output=str(out), figures=False,
                       dataset_dir=str(root), **SMALL_RUN)  # fmt: skip
    assert not (out / "runs").exists()


def test_a_bundle_refuses_to_train_a_network_on_a_crop_too_small_for_it_before_reading_data(tmp_path):
    """brats_rfna with --task nnunet on own 64 x 64 images: refused as training initialises, naming
    --crop_size, before the data are checked and cached (it failed at the first training step)."""
    from monai.bundle import run

    root = small_images(tmp_path)
    with pytest.raises(Exception) as err:
        run("training", config_file=str(ROOT / "bundles" / "brats_rfna" / "configs" / "train.json"),
            logging_file=False, task="nnunet", dataset_dir=str(root), bundle_root=str(tmp_path / "run"),
            **SMALL_RUN)  # fmt: skip
    assert any(
        m.startswith("rfna with the crop: an input of spatial size [64, 64] is down-sampled 64x")
        and m.endswith('(a bundle\'s input is its crop: e.g. --crop_size "[80, 64]").')
        for m in error_chain(err.value)
    ), error_chain(err.value)
    assert not (tmp_path / "run").exists()  # nothing checked, cached or written


@pytest.mark.parametrize(
    "channel_names, value_range",
    [
        ({"0": "rgb_to_0_1", "1": "rgb_to_0_1", "2": "rgb_to_0_1"}, [0, 1]),  # divided by 255
        ({"0": "rescale_to_0_1", "1": "rescale_to_0_1", "2": "rescale_to_0_1"}, [0, 1]),
        ({"0": "R", "1": "G", "2": "B"}, []),  # z-scores: unbounded
        ({"0": "rgb_to_0_1", "1": "G", "2": "rgb_to_0_1"}, []),  # one z-scored channel
    ],
)
def test_own_bundle_metadata_gives_the_value_range_its_normalisation_makes(
    colour_root, channel_names, value_range, tmp_path
):
    """metadata.json's input ``value_range`` was ``[0, 1]`` for CityScapes alone: an own bundle whose
    channels are scaled to [0, 1] (``rgb_to_0_1``, ``rescale_to_0_1``) said ``[]`` (unbounded), so a
    model-zoo user fed it other values; it says [0, 1] exactly when every channel is so scaled."""
    from pam_monai.bundle_templates.own_data import own_data_bundle

    root = tmp_path / "Dataset903_Scaled"
    shutil.copytree(colour_root, root)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": channel_names}))
    bundle = own_data_bundle(root, "fpa", tmp_path / "scaled_fpa", check=False)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["inputs"]["image"]["value_range"] == value_range
