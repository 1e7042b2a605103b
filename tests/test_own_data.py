"""Own data in the nnU-Net v2 raw layout: reader, spec, checker, datalist, and the bundles'
train -> evaluate -> infer with ``--task nnunet``."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, SMALL_RUN, error_chain, verify_bundle

from pam_monai.data import SliceDataset, build_datalist, check_dataset, get_spec, get_split, scan_cases, synth
from pam_monai.engines import prepare_data


@pytest.fixture(scope="module")
def own_root(tmp_path_factory) -> Path:
    return synth("nnunet", tmp_path_factory.mktemp("own") / "Dataset900_Tumour", cases=6, slices=8)


def copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / root.name))


def test_spec_comes_from_dataset_json(own_root):
    spec = get_spec("nnunet", root=own_root)
    assert spec.channels == ("T2", "ADC") and spec.in_channels == 2
    # 90 x 84 training images: the crop is the largest size rounded up to 16, so training only pads
    assert spec.crop_size == (96, 96) and spec.inference_fit == "pad"
    assert spec.foreground_labels == (1, 2, 3) and spec.label_values == (0, 1, 2, 3)
    assert spec.resolve_labels("oedema")[0] == (2,)
    assert spec.resolve_labels("Tumour Core")[0] == (1, 3)  # a region, case-insensitive
    assert spec.resolve_labels(["necrosis", 2])[0] == (1, 2)
    with pytest.raises(ValueError, match="unknown foreground label 'tumor'; its labels: 'background'"):
        spec.resolve_labels("tumor")
    with pytest.raises(ValueError, match="label 0 is the background"):
        spec.resolve_labels(0)
    assert get_spec("nnunet", root=own_root, crop_size=[128, 112]).crop_size == (128, 112)
    with pytest.raises(ValueError, match="pass the data set's root"):
        get_spec("nnunet")


def test_training_image_headers_are_read_once_per_state_of_the_file(own_root, tmp_path, monkeypatch):
    """Every bundle run of an experiment makes the spec (which sizes the crop from the training
    images' headers): each header is read once per process, again only when its file changes."""
    import pam_monai.data.files as files

    root = copy(own_root, tmp_path)
    reads = []

    def volume_shape(path):
        reads.append(Path(path).name)
        return original(path)

    original = files.volume_shape
    monkeypatch.setattr(files, "volume_shape", volume_shape)
    images = sorted(p.name for p in (root / "imagesTr").glob("*_0000.nii.gz"))
    for _ in range(3):
        assert get_spec("nnunet", root=root).crop_size == (96, 96)
    assert sorted(reads) == images
    changed = root / "imagesTr" / images[0]
    src = nib.load(str(changed))
    data = np.pad(np.asarray(src.dataobj), ((0, 20), (0, 0), (0, 0)))  # 110 x 84: a larger crop
    nib.save(nib.Nifti1Image(data, src.affine), str(changed))
    reads.clear()
    assert get_spec("nnunet", root=root).crop_size == (112, 96)
    assert reads == [images[0]]


def test_reader_checker_and_folds(own_root):
    scan = scan_cases("nnunet", own_root)
    assert not scan.problems and [c.case for c in scan.cases] == [f"SYN_{i:03d}" for i in range(1, 7)]
    first = scan.cases[0].to_item()
    assert [Path(p).name for p in first["image"]] == ["SYN_001_0000.nii.gz", "SYN_001_0001.nii.gz"]
    assert Path(first["label"]).name == "SYN_001.nii.gz"
    report = check_dataset("nnunet", own_root, foreground_label="enhancing")
    assert report.ok, report.format()
    assert report.summary("SYN_001").shape == (2, 96, 96, 8)
    assert "2x96x96x8" in report.format()
    datalist = build_datalist("nnunet", own_root)
    assert datalist["dataset"] == "nnunet" and {e["fold"] for e in datalist["training"]} == set(range(5))
    spec = get_spec("nnunet", root=own_root)
    splits = {s: get_split(spec, datalist, s, fold=0, root=own_root) for s in ("train", "val", "test")}
    cases = [e["case"] for s in splits.values() for e in s]
    assert sorted(cases) == [c.case for c in scan.cases]  # every case once
    ds = SliceDataset(splits["train"], spec, foreground_label="tumour core")
    sample = ds[0]
    assert tuple(sample["image"].shape) == (2, 96, 96) and tuple(sample["label"].shape) == (1, 96, 96)


def test_layout_mistakes_are_named(own_root, tmp_path):
    root = copy(own_root, tmp_path)
    (root / "imagesTr" / "SYN_002_0001.nii.gz").unlink()  # a missing channel
    shutil.copy(root / "imagesTr" / "SYN_003_0000.nii.gz", root / "imagesTr" / "SYN_003_0002.nii.gz")
    (root / "labelsTr" / "SYN_004.nii.gz").unlink()  # a missing label
    shutil.copy(root / "labelsTr" / "SYN_001.nii.gz", root / "labelsTr" / "SYN_099.nii.gz")
    (root / "imagesTr" / "notes.txt").write_text("x")
    (root / "imagesTr" / "._SYN_001_0000.nii.gz").write_bytes(
        b"\0\5\26\7 macOS resource fork"
    )  # hidden: not a case
    seg = nib.load(str(root / "labelsTr" / "SYN_005.nii.gz"))
    bad = np.asarray(seg.dataobj).copy()
    bad[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(bad, seg.affine), str(root / "labelsTr" / "SYN_005.nii.gz"))
    report = check_dataset("nnunet", root)
    problems = {str(p) for p in report.problems}
    assert (
        "SYN_002: SYN_002_0001.nii.gz: missing channel 1 ('ADC'): each case needs one file per channel (_0000 to "
        "_0001): add SYN_002_0001.nii.gz, or move the case's other files out" in problems
    )
    assert "SYN_003: SYN_003_0002.nii.gz: channel 0002, but the data set has 2 channels" in problems
    assert (
        "SYN_004: labelsTr/SYN_004.nii.gz: missing label: add it, or move the case's images out of imagesTr"
        in problems
    )
    assert "SYN_099: labelsTr/SYN_099.nii.gz: label without images" in problems
    assert any(p.startswith("notes.txt: not an image file name") for p in problems)
    assert (
        "SYN_005: labelsTr/SYN_005.nii.gz: unexpected label values 7 (allowed 0, 1, 2, 3): name each value in dataset.json's "
        "'labels' (a label or part of a region), or correct the label map" in problems
    )
    assert not any("._SYN" in p for p in problems)
    assert not report.ok


def test_without_channel_files_the_check_still_reports_what_it_sees(own_root, tmp_path):
    """No <case>_0000 file to size the crop from (MSD-style names): the check lists every file
    instead of stopping at the crop."""
    root = copy(own_root, tmp_path)
    for f in (root / "imagesTr").glob("*_0001.nii.gz"):
        f.unlink()
    for f in (root / "imagesTr").glob("*_0000.nii.gz"):
        f.rename(f.with_name(f.name.replace("_0000", "")))
    report = check_dataset("nnunet", root)
    problems = [str(p) for p in report.problems]
    assert not report.ok and problems[0].startswith(
        "SYN_001.nii.gz: not an image file name <case>_<XXXX>.nii.gz"
    )
    assert (
        "no readable 3-D training image <case>_0000.nii.gz" in problems[-1]
        or "no training image" in problems[-1]
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"channel_names": None}, "'channel_names' must map channel numbers to names"),
        ({"channel_names": {"0": "T2", "2": "ADC"}}, "'channel_names' must be numbered 0..1, got [0, 2]"),
        ({"labels": {"lesion": 1}}, "'labels' must have \"background\": 0"),
        ({"labels": {"background": 0, "lesion": "one"}}, "label 'lesion': expected a non-negative integer"),
        ({"labels": {"background": 0}}, "'labels' has no foreground label besides background"),
        (
            {"file_ending": ".jpg"},
            "file_ending '.jpg' is not supported; volumes: .nii.gz, .nii, .mha, .nrrd; 2-D images: .png, .bmp, .tif",
        ),
    ],
)
def test_dataset_json_mistakes_are_named(own_root, tmp_path, change, message):
    root = tmp_path / "own"
    root.mkdir()
    meta = json.loads((own_root / "dataset.json").read_text())
    meta.update({k: v for k, v in change.items() if v is not None})
    for k in [k for k, v in change.items() if v is None]:
        meta.pop(k)
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as err:
        get_spec("nnunet", root=root, crop_size=[96, 96])
    assert message in str(err.value) and str(root / "dataset.json") in str(err.value)


def test_nnunet_v1_labels_and_a_file_ending_without_dot_are_read(own_root, tmp_path):
    root = copy(own_root, tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    meta.pop("channel_names")
    meta.update(
        modality={"0": "T2", "1": "ADC"},  # nnU-Net v1 keys: value -> name
        labels={"0": "background", "1": "necrosis", "2": "oedema", "3": "enhancing"},
        file_ending="nii.gz",
        training=[{"image": "./imagesTr/SYN_001.nii.gz", "label": "./labelsTr/SYN_001.nii.gz"}],
    )
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = get_spec("nnunet", root=root)
    assert spec.channels == ("T2", "ADC") and spec.resolve_labels("oedema")[0] == (2,)
    assert check_dataset(spec, root).ok


def test_own_data_is_never_replaced_by_a_stand_in(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"dataset.json not found: own data needs the nnU-Net v2 raw layout"
    ):
        prepare_data("nnunet", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}})
    )
    with pytest.raises(ValueError, match="imagesTr: no training image <case>_0000.nii.gz"):
        prepare_data("nnunet", tmp_path / "empty", synthetic_dir=tmp_path / "synthetic")
    with pytest.raises(
        ValueError, match="imagesTr: no training case with its label to take the CT channels'"
    ):
        get_spec(
            "nnunet", root=tmp_path / "empty", crop_size=[64, 64]
        )  # CT needs the training set's statistics
    (tmp_path / "empty" / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "MR"}, "labels": {"background": 0, "liver": 1}})
    )
    spec = get_spec("nnunet", root=tmp_path / "empty", crop_size=[64, 64])
    with pytest.raises(
        ValueError, match="(?s)no complete case in .*empty: imagesTr: missing folder: no imagesTr images"
    ):
        prepare_data(spec, tmp_path / "empty", synthetic_dir=tmp_path / "synthetic")
    assert not (tmp_path / "synthetic").exists()


def test_mistyped_dataset_dir_of_an_own_data_bundle_is_named(own_root, tmp_path):
    """An own-data bundle carries its spec, so a mistyped ``--dataset_dir`` reaches the data
    unread: it is named as missing, not reported as a folder without cases."""
    spec = get_spec("nnunet", root=own_root)
    typo = tmp_path / "Dataset900_Tumuor"
    with pytest.raises(FileNotFoundError, match=rf"dataset_dir {re.escape(str(typo))} does not exist: pass"):
        prepare_data(spec, typo, synthetic_dir=tmp_path / "synthetic")
    assert not (tmp_path / "synthetic").exists()


def test_repeated_channel_names_stay_apart(own_root, tmp_path):
    root = copy(own_root, tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "MR", "1": "MR"}
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = get_spec("nnunet", root=root)
    assert spec.channels == ("MR (0000)", "MR (0001)")
    assert check_dataset(spec, root).ok


def test_bundle_trains_evaluates_and_infers_on_own_data(own_root, tmp_path):
    """Any volumetric bundle takes own data with --task nnunet: 2 channels, the crop and the
    labels from dataset.json; masks in each input's grid; the crop and the target are recorded
    and checked."""
    from monai.bundle import run

    def bundle(workflow, *files, **overrides):
        config = [str(ROOT / "bundles" / "isles_rfna" / "configs" / f) for f in files]
        run(workflow, config_file=config, logging_file=False, **overrides)

    root = copy(own_root, tmp_path)
    common = {"bundle_root": str(tmp_path / "run"), "dataset_dir": str(root), "task": "nnunet", **SMALL_RUN}
    bundle("training", "train.json", **common, foreground_label="tumour core")
    record = json.loads((tmp_path / "run" / "models" / "model.json").read_text())["run"]
    assert record["task"] == "nnunet" and record["in_channels"] == 2
    assert record["crop_size"] == [96, 96] and record["foreground_label"] == [1, 3]
    assert record["dataset_json"]["channel_names"] == {"0": "T2", "1": "ADC"}

    # scoring against another target than the one trained is refused, naming the override
    with pytest.raises(Exception) as err:
        bundle("evaluating", "train.json", "evaluate.json", **common)
    assert any(
        "foreground_label: the weights were trained with [1, 3], this run has [1, 2, 3]" in m
        for m in error_chain(err.value)
    )
    bundle("evaluating", "train.json", "evaluate.json", **common, foreground_label="tumour core")
    rows = (tmp_path / "run" / "eval" / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 2 and all(np.isfinite(float(r.split(",")[1])) for r in rows[1:])

    infer = {"bundle_root": str(tmp_path / "run"), "dataset_dir": str(root), "task": "nnunet"}
    out = tmp_path / "run" / "predictions"
    nets = {"network_options": SMALL_RUN["network_options"]}
    bundle("inferring", "inference.json", **infer, **nets)  # the root: its imagesTs
    seg = nib.load(str(out / "SYN_007_seg.nii.gz"))
    image = nib.load(str(root / "imagesTs" / "SYN_007_0000.nii.gz"))
    assert seg.shape == image.shape == (90, 84, 8)
    np.testing.assert_allclose(seg.affine, image.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}

    # any folder of <case>_<XXXX> images; another crop than trained is refused by name
    folder = tmp_path / "incoming"
    folder.mkdir()
    for f in (root / "imagesTr").glob("SYN_001_*"):
        shutil.copy(f, folder / f.name)
    bundle(
        "inferring", "inference.json", **infer, **nets, input_dir=str(folder), output_dir=str(tmp_path / "p2")
    )
    assert nib.load(str(tmp_path / "p2" / "SYN_001_seg.nii.gz")).shape == (90, 84, 8)
    with pytest.raises(Exception) as err:
        bundle("inferring", "inference.json", **infer, **nets, input_dir=str(folder), crop_size=[112, 112])
    assert any(
        "crop_size: the weights were trained with [96, 96], this run has [112, 112] (pass --crop_size '[96, 96]')"
        in m
        for m in error_chain(err.value)
    )

    # a volume larger than the trained crop is segmented whole (a sliding window of the crop); and
    # the model runs without its training data (model.json has the channels, labels and crop)
    big = tmp_path / "big"
    big.mkdir()
    for c in (0, 1):
        src = nib.load(str(folder / f"SYN_001_{c:04d}.nii.gz"))
        data = np.pad(np.asarray(src.dataobj), ((10, 10), (10, 10), (0, 0)), mode="reflect")
        nib.save(nib.Nifti1Image(data, src.affine), str(big / f"BIG_{c:04d}.nii.gz"))
    shutil.rmtree(root)
    no_data = {**infer, "dataset_dir": str(tmp_path / "no_such_data")}
    bundle(
        "inferring", "inference.json", **no_data, **nets, input_dir=str(big), output_dir=str(tmp_path / "p3")
    )
    mask = np.asarray(nib.load(str(tmp_path / "p3" / "BIG_seg.nii.gz")).dataobj)
    assert mask.shape == (110, 104, 8)


def test_experiment_on_own_data_scores_the_trained_target(own_root, tmp_path):
    """``experiment --dataset nnunet``: the grid runs through the volumetric bundle with
    --task nnunet, and every score (the bundle's evaluation, the paper-protocol table) is on the
    target it trained (--foreground_label), not on the data set's default."""
    import csv

    from pam_monai.experiments import run_experiment

    out = tmp_path / "exp"
    result = run_experiment(
        dataset="nnunet",
        networks="fpa",
        output=str(out),
        paper_protocol=True,
        figures=False,
        dataset_dir=str(own_root),
        foreground_label="tumour core",
        epochs=1,
        batch_size=8,
        num_workers=0,
        network_options={"features": [8, 16, 32, 64]},
    )
    assert result is not None
    run = out / "runs" / "fpa" / "seed0" / "fold0"
    assert json.loads((run / "models" / "model.json").read_text())["run"]["foreground_label"] == [1, 3]
    with open(run / "eval" / "metrics.csv") as f:
        evaluated = {r["case"]: float(r["iou"]) for r in csv.DictReader(f)}
    protocol = next(out.rglob("*paper_protocol*.csv"))
    with open(protocol) as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["case"] for r in rows} == set(evaluated)
    for r in rows:
        assert float(r["case_iou"]) == pytest.approx(evaluated[r["case"]], abs=1e-6), r["case"]
    assert "own data, nnU-Net layout" in (out / "results.md").read_text()
    with pytest.raises(ValueError, match="pass --dataset_dir"):
        run_experiment(dataset="nnunet", output=str(tmp_path / "e2"))
    with pytest.raises(ValueError, match="unknown foreground label 'tumor'; its labels"):  # before any run
        run_experiment(
            dataset="nnunet", output=str(tmp_path / "e3"), dataset_dir=str(own_root), foreground_label="tumor"
        )
    assert not (tmp_path / "e3" / "runs").exists()


def test_msd_task_converts_to_the_nnunet_layout(tmp_path, capsys):
    """A Medical Segmentation Decathlon task (4-D images, labels keyed by number, macOS ``._``
    files) is named as such by the reader and converted exactly by ``convert_msd``."""
    from pam_monai.cli import main

    task = tmp_path / "Task99_Tiny"
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    images = {}
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    for case in ("tiny_001", "tiny_002", "tiny_010"):
        data = rng.normal(size=(20, 18, 5, 3)).astype(np.float32)
        sub = "imagesTs" if case == "tiny_010" else "imagesTr"
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)  # scanner codes and units, which the conversion must keep
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, str(task / sub / f"{case}.nii.gz"))
        images[case] = data
        if sub == "imagesTr":
            label = (data[..., 0] > 1).astype(np.uint8) + (data[..., 1] > 1.5)
            nib.save(nib.Nifti1Image(label, affine), str(task / "labelsTr" / f"{case}.nii.gz"))
    (task / "imagesTr" / "._tiny_001.nii.gz").write_bytes(b"\0\5\26\7 macOS resource fork")
    meta = {
        "name": "Tiny",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
            for c in ("tiny_001", "tiny_002")
        ],
        "test": ["./imagesTs/tiny_010.nii.gz"],
    }
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match="a Medical Segmentation Decathlon task .* python -m pam_monai convert_msd"
    ):
        get_spec("nnunet", root=task)

    out = tmp_path / "Dataset099_Tiny"
    main(["convert_msd", "--task_dir", str(task), "--output", str(out)])
    assert "2 training cases, channels FLAIR, T1w, T2w" in capsys.readouterr().out
    spec = get_spec("nnunet", root=out)
    assert spec.channels == ("FLAIR", "T1w", "T2w") and spec.label_names[1:] == (
        ("edema", (1,)),
        ("tumour", (2,)),
    )
    assert spec.crop_size == (32, 32)
    report = check_dataset(spec, out)
    assert report.ok and len(report.cases) == 2, report.format()
    for case, data in images.items():
        sub = "imagesTs" if case == "tiny_010" else "imagesTr"
        for c in range(3):
            img = nib.load(str(out / sub / f"{case}_{c:04d}.nii.gz"))
            np.testing.assert_array_equal(np.asarray(img.dataobj), data[..., c])
            np.testing.assert_allclose(img.affine, affine)
            assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 1)
            assert img.header.get_xyzt_units() == ("mm", "sec")
    assert (out / "labelsTr" / "tiny_001.nii.gz").read_bytes() == (
        task / "labelsTr" / "tiny_001.nii.gz"
    ).read_bytes()
    with pytest.raises(SystemExit) as exit_:  # the output exists: refused, one error line
        main(["convert_msd", "--task_dir", str(task), "--output", str(out)])
    assert "already exists; choose a new folder" in str(exit_.value.code)

    # tasks that would convert into a broken data set: refused, naming the file and the entry
    from pam_monai.data.msd import convert_msd

    def refused(change, message, label_affine=None):
        if label_affine is not None:
            nib.save(
                nib.Nifti1Image(np.zeros((20, 18, 5), np.uint8), label_affine),
                str(task / "labelsTr" / "tiny_002.nii.gz"),
            )
        (task / "dataset.json").write_text(json.dumps(change(json.loads(json.dumps(meta)))))
        with pytest.raises(ValueError, match=message):
            convert_msd(task, tmp_path / "refused")
        assert not (tmp_path / "refused").exists()

    refused(
        lambda m: {**m, "training": m["training"] + m["training"][:1]},
        r"listed more than once: \['tiny_001'\]",
    )
    refused(
        lambda m: {**m, "labels": {"0": "background", "1": "tumour", "2": "tumour"}},
        r"label name\(s\) \['tumour'\]",
    )
    refused(
        lambda m: {**m, "training": [{"image": "./imagesTr/tiny_001.nii.gz"}]},
        "training entries without a 'label'",
    )
    shifted = affine.copy()
    shifted[0, 3] = 50.0
    refused(
        lambda m: m,
        r"tiny_002.nii.gz: its affine differs from its image's \(largest difference 50\)",
        shifted,
    )


def test_own_data_bundle_trains_without_overrides_and_infers_from_images_alone(
    own_root, tmp_path, monkeypatch
):
    """``python -m pam_monai bundle``: a self-contained bundle whose configs carry the data set's
    channels, labels, crop and target; its metadata passes the schema; a copy infers on images
    alone (no data set, no dataset.json) and writes into its own folder."""
    from monai.bundle import run

    from pam_monai.cli import main

    monkeypatch.chdir(tmp_path)
    main(["bundle", "--dataset_dir", str(own_root), "--output", "bundles/tumour_rfna", "--network", "rfna",
          "--foreground_label", "tumour core"])  # fmt: skip
    bundle = tmp_path / "bundles" / "tumour_rfna"
    configs = bundle / "configs"
    meta = verify_bundle(configs, SMALL_RUN["network_options"])
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 2 and image["spatial_shape"] == [96, 96]
    assert image["channel_def"] == {"0": "T2", "1": "ADC"}
    assert "trained to segment the tumour core (labels 1, 3)" in (bundle / "docs" / "README.md").read_text()
    # the user's bundle, not a release of pam-monai's
    assert meta["changelog"] == {
        meta[
            "version"
        ]: f"first version: rfna on {meta['data_source']}, written by pam-monai {meta['version']}"
    }

    run(
        "training", config_file=str(configs / "train.json"), logging_file=False, **SMALL_RUN
    )  # no data overrides
    record = json.loads((bundle / "models" / "model.json").read_text())["run"]
    assert record["foreground_label"] == [1, 3] and record["crop_size"] == [96, 96]
    assert record["data_root"] == str(own_root.resolve())

    # shared: a copy elsewhere, run from its own folder, on a folder of images, without the data set
    deployed = Path(shutil.copytree(bundle, tmp_path / "elsewhere" / "tumour_rfna"))
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for f in (own_root / "imagesTs").iterdir():
        shutil.copy(f, incoming / f.name)
    monkeypatch.chdir(deployed)
    run("inferring", config_file="configs/inference.json", logging_file=False, input_dir=str(incoming),
        dataset_dir=str(tmp_path / "no_such_data"), network_options=SMALL_RUN["network_options"])  # fmt: skip
    seg = nib.load(str(deployed / "predictions" / "SYN_007_seg.nii.gz"))
    assert seg.shape == nib.load(str(incoming / "SYN_007_0000.nii.gz")).shape
    assert not (bundle / "predictions").exists()  # the copy used its own folder, not the original's
    with pytest.raises(SystemExit) as exit_:
        main(["bundle", "--dataset_dir", str(own_root), "--output", str(bundle)])
    assert "already holds files; choose a new folder or pass --overwrite" in str(exit_.value.code)


def test_own_data_bundle_is_refused_for_a_data_set_that_fails_the_check(
    own_root, tmp_path, monkeypatch, capsys
):
    """``python -m pam_monai bundle`` checks every case as training will: a data set with problems
    is refused with all of them listed and nothing written (training from it would refuse only
    later); ``--no_check`` writes the bundle anyway and says it was not checked."""
    from pam_monai.cli import main

    root = copy(own_root, tmp_path)
    image = root / "imagesTr" / "SYN_001_0000.nii.gz"
    img = nib.load(str(image))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(image))
    (root / "labelsTr" / "SYN_002.nii.gz").unlink()
    monkeypatch.chdir(tmp_path)
    # a folder name the bundle refuses is named before every case is read (minutes for a large set)
    with pytest.raises(SystemExit) as exit_:
        main(["bundle", "--dataset_dir", str(root), "--output", "bundles/broken_fpa2"])
    message = str(exit_.value.code)
    assert (
        "name must end in _fpa (e.g. lesion_fpa), got 'broken_fpa2': pass --output bundles/broken_fpa2_fpa"
        in message
    )
    assert "problem(s) in the data set" not in message
    with pytest.raises(SystemExit) as exit_:  # an RFNA bundle's name without --network rfna
        main(["bundle", "--dataset_dir", str(root), "--output", "bundles/broken_rfna"])
    assert "got 'broken_rfna': pass --network rfna" in str(exit_.value.code)
    with pytest.raises(SystemExit) as exit_:
        main(["bundle", "--dataset_dir", str(root), "--output", "bundles/broken_fpa"])
    message = str(exit_.value.code)
    assert "2 problem(s) in the data set, so training from a bundle made of it would refuse" in message
    assert "no bundle written" in message and "--no_check" in message
    assert "SYN_001: SYN_001_0000.nii.gz: 1 NaN and 0 Inf voxels" in message
    assert "SYN_002: labelsTr/SYN_002.nii.gz: missing label" in message
    assert not (tmp_path / "bundles").exists()
    main(["bundle", "--dataset_dir", str(root), "--output", "bundles/broken_fpa", "--no_check"])
    assert (tmp_path / "bundles" / "broken_fpa" / "configs" / "train.json").is_file()
    assert "not checked: training checks every case first" in capsys.readouterr().out


def test_check_names_too_few_cases_for_the_default_split_as_bundle_refuses_them(own_root, tmp_path, capsys):
    """``check`` said OK for 2 cases that ``bundle`` and training refuse (fold 0 of the 5-fold split has no
    training case): it names the same problem and ways out, by the same rule; 3 cases pass, and a check of
    one's own split (``--datalist``) is not told about the default one."""
    from pam_monai.cli import main

    root = copy(own_root, tmp_path)
    for case in ("SYN_003", "SYN_004", "SYN_005", "SYN_006"):
        for path in [*root.glob(f"imagesTr/{case}_*"), root / "labelsTr" / f"{case}.nii.gz"]:
            path.unlink()
    with pytest.raises(SystemExit) as exit_:
        main(["check", "--root", str(root), "--quiet"])
    assert exit_.value.code == 1
    said = capsys.readouterr().out
    assert (
        f"ERROR {root.name}: split: 2 cases, too few for the bundles' 5-fold cross-validation" in said
        and "the train split of fold 0 would be empty and training with the bundles' default split would refuse "
        "it: add cases to imagesTr/ and labelsTr/, or train with --data_list_file_path"
        in said
    ), said
    datalist = tmp_path / "own.json"
    main(["datalist", "nnunet", str(datalist), "--root", str(root)])
    listed = json.loads(datalist.read_text())
    listed["validation"] = [listed["training"].pop()]
    for entry in listed["training"]:
        entry.pop("fold", None)
    datalist.write_text(json.dumps(listed))
    capsys.readouterr()
    main(["check", "--root", str(root), "--quiet", "--datalist", str(datalist)])
    assert "split:" not in capsys.readouterr().out
    three = copy(own_root, tmp_path / "three")
    for case in ("SYN_004", "SYN_005", "SYN_006"):
        for path in [*three.glob(f"imagesTr/{case}_*"), three / "labelsTr" / f"{case}.nii.gz"]:
            path.unlink()
    main(["check", "--root", str(three), "--quiet"])
    assert "OK" in capsys.readouterr().out


def test_own_data_bundle_is_refused_for_too_few_cases_for_its_split(own_root, tmp_path, monkeypatch, capsys):
    """A data set of 2 cases passes every per-case check, but fold 0 of the bundles' 5-fold split then
    has no training case and training refuses it: ``bundle`` refuses it up front, naming the count and
    the way out, and writes nothing (it wrote a bundle that could not train); 3 cases are enough, and
    ``--no_check`` still writes the bundle (for a datalist of one's own split)."""
    from pam_monai.cli import main

    root = copy(own_root, tmp_path)
    for case in ("SYN_003", "SYN_004", "SYN_005", "SYN_006"):
        for path in [*root.glob(f"imagesTr/{case}_*"), root / "labelsTr" / f"{case}.nii.gz"]:
            path.unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["bundle", "--dataset_dir", str(root), "--output", "bundles/two_fpa"])
    message = str(exit_.value.code)
    assert "2 cases, too few for the bundles' 5-fold cross-validation" in message
    assert "the train split of fold 0 would be empty" in message
    assert "--data_list_file_path" in message and "--no_check" in message
    assert not (tmp_path / "bundles").exists()
    main(["bundle", "--dataset_dir", str(root), "--output", "bundles/two_fpa", "--no_check"])
    assert (tmp_path / "bundles" / "two_fpa" / "configs" / "train.json").is_file()
    three = copy(own_root, tmp_path / "three")
    for case in ("SYN_004", "SYN_005", "SYN_006"):
        for path in [*three.glob(f"imagesTr/{case}_*"), three / "labelsTr" / f"{case}.nii.gz"]:
            path.unlink()
    main(["bundle", "--dataset_dir", str(three), "--output", "bundles/three_fpa"])
    assert (tmp_path / "bundles" / "three_fpa" / "configs" / "train.json").is_file()


def test_own_data_bundle_paths_names_and_data_set_mismatch(own_root, tmp_path, monkeypatch):
    """Made outside the working folder: bundle_root is the bundle's folder (from wherever MONAI runs
    its configs) and a README whose commands run from the bundle's folder; quotes in paths refused; a one-number crop is square; a bundle pointed at a
    data set with other labels is refused by name."""
    from monai.bundle import run

    from pam_monai.bundle_templates.own_data import own_data_bundle

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = own_data_bundle(own_root, "fpa", tmp_path / "shared" / "tumour_fpa", crop_size=112)
    train = json.loads((out / "configs" / "train.json").read_text())
    assert train["bundle_root"] == "$pam_monai.engines.bundle_root()" and train["crop_size"] == [112, 112]
    readme = (out / "docs" / "README.md").read_text()
    assert "--config_file configs/train.json" in readme and "./tumour_fpa/" not in readme
    assert "Run the commands below from the bundle's own folder" in readme
    assert "--dataset_dir /path/to/data" not in readme and "BraTS 2021+" not in readme
    # larger volumes: what evaluation and inference do (CasePredictor's sliding window), not a crop
    assert "sliding window of the crop in evaluation and inference" in readme
    assert "centre-cropped with a warning" not in readme
    # run from elsewhere: MONAI's workflow runs the bundle's own configs, so its outputs go there
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(out / "configs" / "train.json"), workflow_type="train", logging_file=False
    )
    workflow.initialize()
    assert (
        Path(workflow.bundle_root) == out
        and Path(workflow.parser.get_parsed_content("ckpt_dir")) == out / "models"
    )
    assert not any(work.iterdir())
    with pytest.raises(ValueError, match="paths with quotes"):
        own_data_bundle(own_root, "fpa", work / "bob's_fpa")
    here = work / "lesion_fpa"
    here.mkdir()
    monkeypatch.chdir(here)
    own_data_bundle(own_root, "fpa", ".")  # "." is the folder's own name
    assert "# lesion_fpa: " in (here / "docs" / "README.md").read_text()

    other = copy(own_root, tmp_path / "other")
    meta = json.loads((other / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "core": 1, "rim": 2, "active": 3}
    (other / "dataset.json").write_text(json.dumps(meta))
    monkeypatch.chdir(out)
    with pytest.raises(Exception) as err:
        run(
            "training",
            config_file="configs/train.json",
            logging_file=False,
            dataset_dir=str(other),
            **SMALL_RUN,
        )
    assert any(
        "describes another data set than this run's spec (labels:" in m for m in error_chain(err.value)
    )


def test_own_data_bundle_takes_windows_paths(own_root, tmp_path, monkeypatch):
    """Every Windows path has backslashes (``C:\\Users\\...``), and they were refused: `pam_monai
    bundle` never made a bundle there. The data set's path is a plain config value, which MONAI reads
    unchanged and training reads from; a bundle on another drive than the working folder (where
    ``os.path.relpath`` raises) runs from its own folder. Quotes in the data set's path are still refused."""
    from monai.bundle import run

    from pam_monai.bundle_templates import own_data

    data = copy(own_root, tmp_path / "C:\\Users\\Jürgen Müller")
    monkeypatch.chdir(tmp_path)
    out = own_data.own_data_bundle(data, "fpa", tmp_path / "tumour_fpa", check=False)
    train = json.loads((out / "configs" / "train.json").read_text(encoding="utf-8"))
    assert train["dataset_dir"] == str(data)
    run("training", config_file=str(out / "configs" / "train.json"), logging_file=False, **SMALL_RUN)
    assert (out / "models" / "model.pt").is_file()

    def other_drive(path, start=os.curdir):
        raise ValueError("path is on mount 'D:', start on mount 'C:'")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(own_data.os.path, "relpath", other_drive)
    assert own_data._folder_below_cwd(tmp_path / "lesion_fpa") is None
    monkeypatch.undo()
    with pytest.raises(ValueError, match="bob's data/Dataset900_Tumour: paths with quotes"):
        own_data.own_data_bundle(copy(own_root, tmp_path / "bob's data"), "fpa", tmp_path / "lesion_fpa")


def test_inference_refuses_case_names_that_differ_in_letter_case_only(own_root, tmp_path):
    """SYN_007 and syn_007 get masks SYN_007_seg.nii.gz and syn_007_seg.nii.gz: one file on macOS and
    Windows, where the second mask replaced the first without a word. Refused, naming both."""
    from pam_monai.engines.infer import find_inference_cases

    root = copy(own_root, tmp_path)
    for channel in ("0000", "0001"):
        shutil.copy(
            root / "imagesTs" / f"SYN_007_{channel}.nii.gz", root / "imagesTs" / f"syn_007_{channel}.nii.gz"
        )
    with pytest.raises(ValueError) as e:
        find_inference_cases("nnunet", root)
    assert str(e.value).splitlines()[1:] == [
        f"SYN_007, syn_007: {root / 'imagesTs'}: case names that differ in letter case (or Unicode form) only, "
        "whose masks would have one name on macOS and Windows: rename one"
    ]


def test_own_bundle_readme_commands_take_a_folder_name_with_a_space(own_root, tmp_path, monkeypatch):
    """A bundle folder named with a space: the README's commands split it into two arguments."""
    import shlex

    from pam_monai.bundle_templates.own_data import own_data_bundle

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # made below it: run from it; made elsewhere: from its own folder
    for output, where in (("my tumour_fpa", "./my tumour_fpa/"), (tmp_path / "my lesion_fpa", "")):
        readme = (own_data_bundle(own_root, "fpa", output, check=False) / "docs" / "README.md").read_text(
            encoding="utf-8"
        )
        flags = ("--config_file", "--filepath", "--ckpt_file")
        lines = [line.rstrip("\\") for line in readme.splitlines() if any(f in line for f in flags)]
        args = [a for line in lines for a in shlex.split(line)]
        files = {args[i + 1] for i, a in enumerate(args) if a in flags}
        assert {
            f"{where}configs/train.json",
            f"{where}configs/inference.json",
            f"{where}models/model.pt",
        } <= files
        assert f"['{where}configs/train.json','{where}configs/evaluate.json']" in files


def test_single_channel_msd_task_is_copied_as_shipped(tmp_path):
    from pam_monai.data.msd import convert_msd

    task = tmp_path / "Task98_CT"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    img = nib.Nifti1Image(np.arange(20 * 18 * 4, dtype=np.int16).reshape(20, 18, 4), np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)  # CT stored with an intercept: kept as stored
    nib.save(img, str(task / "imagesTr" / "ct_001.nii.gz"))
    liver = np.zeros((20, 18, 4), np.uint8)
    liver[5:10, 4:12, 1:3] = 1
    nib.save(nib.Nifti1Image(liver, np.eye(4)), str(task / "labelsTr" / "ct_001.nii.gz"))
    meta = {
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver"},
        "training": [{"image": "./imagesTr/ct_001.nii.gz", "label": "./labelsTr/ct_001.nii.gz"}],
        "test": [],
    }
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="a Medical Segmentation Decathlon task \\(one file per case"):
        get_spec("nnunet", root=task)
    (tmp_path / "out").mkdir()  # an empty folder made beforehand is fine
    out = convert_msd(task, tmp_path / "out", progress=False)
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir makes it, not private (mkdtemp's 0700)
    converted = out / "imagesTr" / "ct_001_0000.nii.gz"
    assert converted.read_bytes() == (task / "imagesTr" / "ct_001.nii.gz").read_bytes()
    spec = get_spec("nnunet", root=out)
    assert spec.channels == ("CT",)
    # CT: the training foreground's statistics, in Hounsfield units (the stored intercept applied)
    hu = np.arange(20 * 18 * 4).reshape(20, 18, 4)[liver > 0] - 1024.0
    norm = spec.channel_norms[0]
    assert (
        norm.scheme == "ct" and norm.mean == pytest.approx(hu.mean()) and norm.std == pytest.approx(hu.std())
    )
    assert (norm.lower, norm.upper) == pytest.approx((np.percentile(hu, 0.5), np.percentile(hu, 99.5)))
    (task / "labelsTr" / "ct_001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="ct_001.nii.gz: listed in dataset.json but missing"):
        convert_msd(task, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()


def test_an_external_test_set_of_own_data_needs_only_a_test_list(own_root, tmp_path):
    """Cross-validated data sets (own data, BRATS) take an explicit ``test`` list, as the bundles'
    README says for external test sets; the other splits may be missing."""
    items = [c.to_item(relative_to=own_root) for c in scan_cases("nnunet", own_root).cases[:2]]
    (tmp_path / "external.json").write_text(json.dumps({"test": items}))
    spec = get_spec("nnunet", root=own_root)
    data = prepare_data(spec, own_root, tmp_path / "external.json", splits=["test"])
    assert (
        [e["case"] for e in data["test"]] == ["SYN_001", "SYN_002"] and not data["train"] and not data["val"]
    )
    with pytest.raises(
        ValueError,
        match=r"datalist: no 'training' list; its keys: 'test' \(data_list_file_path .*external.json\)",
    ):
        prepare_data(spec, own_root, tmp_path / "external.json")  # training needs its folds
    with pytest.raises(ValueError, match=r"fold 7: the datalist has 5 folds: pass --fold 0..4"):
        prepare_data(spec, own_root, fold=7)  # "fold must be in 0..4" named no override
    with pytest.raises(ValueError, match=r"got \['valid'\]: pass --eval_split test, val or train"):
        prepare_data(spec, own_root, splits=["valid"])  # evaluation's --eval_split valid: no flag named


@pytest.mark.parametrize("ending", [".mha", ".nrrd"])
def test_metaimage_and_nrrd_volumes_read_as_their_nifti(own_root, tmp_path, ending):
    """The same data set written as MetaImage / NRRD (SimpleITK) gives the NIfTI set's spec, arrays
    and checks; a model infers on those files and writes its masks in their format, on their grid."""
    import SimpleITK as sitk

    from pam_monai.data import get_preprocess_transforms, load_case, preprocess_case
    from pam_monai.data.files import load_volume

    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # NIfTI header fields MetaImage has no place for
    root = tmp_path / "Dataset905_MHA"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        for f in (own_root / sub).glob("*.nii.gz"):
            (root / sub).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.ReadImage(str(f)), str(root / sub / f.name.replace(".nii.gz", ending)))
    meta = json.loads((own_root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ending}))
    nifti, other = get_spec("nnunet", root=own_root), get_spec("nnunet", root=root)
    assert other.crop_size == nifti.crop_size and other.channels == nifti.channels
    assert check_dataset(other, root).ok
    for a, b in zip(scan_cases(nifti, own_root).cases[:2], scan_cases(other, root).cases[:2]):
        x, y = load_case(nifti, a.to_item()), load_case(other, b.to_item())
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_allclose(x["affine"], y["affine"], atol=1e-6)
        np.testing.assert_array_equal(preprocess_case(nifti, x)["image"], preprocess_case(other, y)["image"])
    ref = get_preprocess_transforms(other)(
        dict(b.to_item())
    )  # the MONAI chain reads them through SimpleITK too
    np.testing.assert_allclose(np.asarray(ref["image"]), preprocess_case(other, y)["image"], atol=1e-6)

    from monai.bundle import run

    configs = ROOT / "bundles" / "brats_fpa" / "configs"
    common = {"bundle_root": str(tmp_path / "run"), "task": "nnunet"}
    run(
        "training",
        config_file=str(configs / "train.json"),
        logging_file=False,
        dataset_dir=str(own_root),
        **common,
        **SMALL_RUN,
    )
    nets = {"network_options": SMALL_RUN["network_options"]}
    for data, out in ((own_root, "p_nii"), (root, "p_other")):
        run("inferring", config_file=str(configs / "inference.json"), logging_file=False, **common, **nets,
            dataset_dir=str(data), output_dir=str(tmp_path / out))  # fmt: skip
    a, affine_a = load_volume(tmp_path / "p_nii" / "SYN_007_seg.nii.gz")
    b, affine_b = load_volume(tmp_path / "p_other" / f"SYN_007_seg{ending}")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(affine_a, affine_b, atol=1e-6)


def test_volumes_larger_than_the_crop_are_segmented_whole(tmp_path):
    """Own volumes larger in-plane than the trained crop: inference and evaluation segment every
    voxel (MONAI's sliding window of the crop, Gaussian-blended), not the centre alone. A pointwise
    network (logit = 10 x the first channel's normalised value) makes the expected mask exact."""
    import torch

    from pam_monai.data import preprocess_case
    from pam_monai.engines import CaseDataset, CasePredictor, SliceWiseInferer, find_inference_cases
    from pam_monai.engines.data import on_case_grid

    root = synth("nnunet", tmp_path / "Dataset931_Big", cases=5, slices=3, size=(52, 44))
    spec = get_spec("nnunet", root=root, crop_size=(32, 32))

    class Pointwise(torch.nn.Module):
        seen: set = set()

        def forward(self, x):
            self.seen.add(tuple(x.shape[-2:]))
            return 10.0 * x[:, :1]

    items = find_inference_cases(spec, root / "imagesTr")
    CasePredictor(Pointwise(), items, spec, str(tmp_path / "out")).run()
    assert Pointwise.seen == {(32, 32)}  # the network sees windows of the trained size only
    for item in items:
        expected = preprocess_case(spec, item, whole=True)["image"][0] > 0
        assert expected.shape == (52, 44, 3)  # nothing cut
        mask = np.asarray(nib.load(str(tmp_path / "out" / f"{item['case']}_seg.nii.gz")).dataobj)
        np.testing.assert_array_equal(mask, expected)
        assert mask[:10].any() or mask[-10:].any() or mask[:, :6].any()  # the rim has foreground here

    # evaluation: the same masks on the case's own grid
    train = get_split(spec, build_datalist(spec, root), "test", root=root)
    dataset = CaseDataset(train[:1], spec)
    sample = dataset[0]
    logits = SliceWiseInferer(4, roi_size=spec.crop_size)(sample["image"][None], Pointwise())
    pred, _ = on_case_grid(
        (logits[0, 0] > 0).numpy(), sample["label"][0].numpy(), sample.get("label_full"), "crop"
    )
    np.testing.assert_array_equal(pred, preprocess_case(spec, train[0], whole=True)["image"][0] > 0)

    # with spatial context (a 3x3 mean): each slice is MONAI's Gaussian-blended sliding window of it
    from monai.inferers import sliding_window_inference

    context = torch.nn.Conv2d(2, 1, 3, padding=1, bias=False)
    torch.nn.init.constant_(context.weight, 1 / 18)
    volume = sample["image"][None]
    with torch.no_grad():
        ours = SliceWiseInferer(2, roi_size=(32, 32))(volume, context)
        for k in range(volume.shape[-1]):
            by_hand = sliding_window_inference(
                volume[..., k], (32, 32), 4, context, overlap=0.5, mode="gaussian"
            )
            torch.testing.assert_close(ours[..., k], by_hand, rtol=1e-5, atol=1e-6)


def test_cases_stored_in_another_orientation_are_named(tmp_path, caplog):
    """Own volumes reach the network as stored: check names a case whose affine's orientation
    differs from most cases', training names it too (its log), records the usual one, and inference names new images
    stored otherwise."""
    import logging

    from pam_monai.data.checker import usual_orientation
    from pam_monai.engines import CasePredictor, atomic_save, find_inference_cases
    from pam_monai.networks import get_network

    root = synth("nnunet", tmp_path / "Dataset932_Turned", cases=5, slices=3, test_cases=1)
    flipped = sorted((root / "imagesTr").glob("SYN_002_*")) + [root / "labelsTr" / "SYN_002.nii.gz"]
    for path in flipped + sorted((root / "imagesTs").glob("*.nii.gz")):
        img = nib.load(str(path))
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine  # the same voxels, labelled LPS
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), lps), str(path))
    report = check_dataset("nnunet", root)
    turned = [w for w in report.warnings if "orientation LPS, but 4 of the 5 cases are RAS" in w.message]
    assert [w.case for w in turned] == ["SYN_002"]
    assert "orientation (affine axis codes): RAS 4, LPS 1" in report.format()
    spec = get_spec("nnunet", root=root)
    # training (and evaluation) check every case first and log what check prints beside its table
    with caplog.at_level(logging.INFO, logger="pam_monai"):
        prepare_data(spec, root)
    assert "orientation (affine axis codes): RAS 4, LPS 1" in caplog.text
    assert "voxel spacing (mm): " in caplog.text
    assert "SYN_002: image: orientation LPS, but 4 of the 5 cases are RAS" in caplog.text
    caplog.clear()
    assert usual_orientation(spec, get_split(spec, build_datalist(spec, root), "train", root=root)) == "RAS"

    net = get_network(
        "unet", spatial_dims=2, in_channels=2, out_channels=1, options=SMALL_RUN["network_options"]
    )
    atomic_save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(
        json.dumps({"metric": "val_iou", "value": 0.1, "run": {"orientation": "RAS"}})
    )
    items = find_inference_cases(spec, root / "imagesTs")
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        CasePredictor(net, items, spec, str(tmp_path / "out"), ckpt_path=str(tmp_path / "model.pt")).run()
    assert "SYN_006: SYN_006_0000.nii.gz: orientation LPS, but the training cases are RAS" in caplog.text


def test_cases_of_another_in_plane_spacing_are_named(tmp_path):
    """Volumes are not resampled: check names a case whose in-plane voxels are twice (or half) the
    median case's, its structures being another size in pixels; one at 1.5 times is left alone."""
    root = synth("nnunet", tmp_path / "Dataset933_Spaced", cases=5, slices=3)  # 1.2 x 1.2 x 3 mm
    for case, scale in (("SYN_001", 2.5), ("SYN_003", 1.5)):
        for path in sorted((root / "imagesTr").glob(f"{case}_*")) + [root / "labelsTr" / f"{case}.nii.gz"]:
            img = nib.load(str(path))
            nib.save(
                nib.Nifti1Image(np.asarray(img.dataobj), np.diag([scale, scale, 1.0, 1.0]) @ img.affine),
                str(path),
            )
    report = check_dataset("nnunet", root)
    spaced = [w for w in report.warnings if "in-plane voxel size" in w.message]
    assert [w.case for w in spaced] == ["SYN_001"], report.format()
    assert "in-plane voxel size 3 x 3 mm, but the cases' median is 1.2 x 1.2 mm" in spaced[0].message
    assert "0.4 times their usual size in pixels; resample it" in spaced[0].message
    assert report.ok  # a warning: a data set of mixed resolutions may be meant so


def test_inference_names_images_of_another_resolution_than_training(tmp_path, caplog):
    """Training records its cases' median in-plane voxel size; inference names a new image whose
    voxels are twice or half that (not resampled, its structures reach the network at another
    size in pixels) and is silent about one of the training's resolution."""
    import logging

    from pam_monai.data.checker import usual_in_plane_spacing
    from pam_monai.engines import CasePredictor, atomic_save, find_inference_cases
    from pam_monai.networks import get_network

    root = synth("nnunet", tmp_path / "Dataset934_Coarse", cases=5, slices=3, test_cases=2)  # 1.2 mm
    spec = get_spec("nnunet", root=root)
    assert usual_in_plane_spacing(spec, get_split(spec, build_datalist(spec, root), "train", root=root)) == [
        1.2,
        1.2,
    ]
    coarse = sorted((root / "imagesTs").glob("*.nii.gz"))[:2]  # the first test case's two channels
    for path in coarse:
        img = nib.load(str(path))
        nib.save(
            nib.Nifti1Image(np.asarray(img.dataobj), np.diag([2.5, 2.5, 1.0, 1.0]) @ img.affine), str(path)
        )
    net = get_network(
        "unet", spatial_dims=2, in_channels=2, out_channels=1, options=SMALL_RUN["network_options"]
    )
    atomic_save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(
        json.dumps({"metric": "val_iou", "value": 0.1, "run": {"in_plane_spacing": [1.2, 1.2]}})
    )
    items = find_inference_cases(spec, root / "imagesTs")
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        CasePredictor(net, items, spec, str(tmp_path / "out"), ckpt_path=str(tmp_path / "model.pt")).run()
    named = [r.getMessage() for r in caplog.records if "in-plane voxel size" in r.getMessage()]
    case = coarse[0].name.rsplit("_", 1)[0]
    assert len(named) == 1 and named[0].startswith(
        f"{case}: {coarse[0].name}: in-plane voxel size 3 x 3 mm"
    ), named
    assert "but training's (median) is 1.2 x 1.2 mm" in named[0]


def test_dataset_json_typos_and_a_wrong_case_count_are_named(own_root, tmp_path):
    """A mistyped key would be ignored and its default taken (``file_endings``: .nii.gz assumed);
    nnU-Net refuses a numTraining that is not the number of training cases."""
    root = copy(own_root, tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    for typo, key in (("chanel_names", "channel_names"), ("file_endings", "file_ending")):
        wrong = {(typo if k == key else k): v for k, v in meta.items()}
        (root / "dataset.json").write_text(json.dumps(wrong))
        with pytest.raises(ValueError, match=rf"dataset.json: key '{typo}': did you mean '{key}'\?"):
            get_spec("nnunet", root=root)
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": meta["numTraining"] + 3}))
    report = check_dataset("nnunet", root)
    stated = meta["numTraining"] + 3
    assert any(
        f"numTraining is {stated}, but imagesTr holds {meta['numTraining']} cases" in w.message
        for w in report.warnings
    )
    (root / "dataset.json").write_text(json.dumps(meta))
    assert not any("numTraining" in w.message for w in check_dataset("nnunet", root).warnings)


def test_check_verdict_counts_cases_the_scan_refused(own_root, tmp_path):
    """A case whose files have another ending than dataset.json's is a problem of the scan, not of
    a read case: the verdict still counts it among the cases with problems."""
    root = copy(own_root, tmp_path)
    for path in sorted((root / "imagesTr").glob("SYN_001_*.nii.gz")):
        img = nib.load(str(path))
        nib.save(img, str(path).replace(".nii.gz", ".nii"))
        path.unlink()
    report = check_dataset("nnunet", root)
    assert not report.ok and "SYN_001" in {p.case for p in report.problems}
    verdict = report.format().splitlines()[-1]
    assert verdict.startswith("FAILED") and " 0 with problems" not in verdict, verdict


def test_training_refuses_with_one_list_of_layout_and_content_problems(own_root, tmp_path):
    """A missing label file (the layout) and NaN voxels (the contents) come in one refusal, not
    one after the other."""
    root = copy(own_root, tmp_path)
    (root / "labelsTr" / "SYN_001.nii.gz").unlink()
    path = root / "imagesTr" / "SYN_002_0000.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    with pytest.raises(ValueError) as err:
        prepare_data("nnunet", root)
    assert "SYN_001" in str(err.value) and "NaN" in str(err.value), str(err.value)


def test_own_bundle_evaluates_and_infers_with_the_crop_it_was_trained_with(own_root, tmp_path):
    """A training run's --crop_size is the model's (model.json): evaluation and inference of the
    own-data bundle need no repeating it; another explicit crop is still refused by name."""
    from monai.bundle import run

    from pam_monai.bundle_templates.own_data import own_data_bundle

    bundle = own_data_bundle(own_root, "fpa", tmp_path / "crop_fpa")
    configs = bundle / "configs"
    common = {"bundle_root": str(bundle), "logging_file": False}
    run("training", config_file=str(configs / "train.json"), crop_size=[64, 64], **common, **SMALL_RUN)
    record = json.loads((bundle / "models" / "model.json").read_text())["run"]
    assert record["crop_size"] == [64, 64]
    files = [str(configs / "train.json"), str(configs / "evaluate.json")]
    run("evaluating", config_file=files, **common)  # the network, too, as model.json names it
    assert (bundle / "eval" / "metrics.csv").is_file()
    run(
        "inferring",
        config_file=str(configs / "inference.json"),
        **common,
        input_dir=str(own_root / "imagesTs"),
    )
    assert any((bundle / "predictions").glob("*_seg.nii.gz"))
    with pytest.raises(Exception) as err:
        run("inferring", config_file=str(configs / "inference.json"), **common, crop_size=[96, 96])
    assert any("crop_size: the weights were trained with [64, 64]" in m for m in error_chain(err.value))


def test_datalist_mistakes_are_named_by_check_and_refused_before_training(own_root, tmp_path, capsys):
    """A hand-edited --data_list_file_path is checked with the data set: an entry with three image
    files for two channels (found before only when training, validation or evaluation first loaded
    it), a case that is not there, channels swapped, one file for two channels, a case in two splits,
    a training entry without a label. ``check --datalist`` and training's first step name the datalist and the case, and
    nothing is cached or trained."""
    from monai.bundle import run

    from pam_monai.cli import main as cli

    datalist = build_datalist("nnunet", own_root)
    entries = datalist["training"]
    entries[0]["image"].append(entries[0]["image"][1])
    entries[1]["image"].reverse()
    entries[2].pop("label")
    entries[3]["image"][1] = entries[3]["image"][0]
    ghost = {
        **entries[3],
        "case": "SYN_099",
        "image": ["imagesTr/SYN_099_0000.nii.gz", "imagesTr/SYN_099_0001.nii.gz"],
    }
    datalist["test"] = [entries[4], ghost]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(datalist))
    expected = [
        f"SYN_001: {path}: 'image' lists 3 file(s), but the data set has 2 channels ('T2', 'ADC'): one file per "
        "channel, in that order",
        f"SYN_002: {path}: 'image' lists the channel files in another order than the data set's channels ('T2', 'ADC')",
        f"SYN_003: {path}: no 'label' (every training entry needs one)",
        f"SYN_004: {path}: 'image' lists imagesTr/SYN_004_0000.nii.gz for more than one channel",
        f"SYN_005: {path}: listed twice (training and test): a case belongs to one split",
        f"SYN_099: {path}: imagesTr/SYN_099_0000.nii.gz, imagesTr/SYN_099_0001.nii.gz: not found; its paths are "
        f"relative to the data root {own_root}",
    ]
    assert [str(p) for p in check_dataset("nnunet", own_root, datalist=path).problems] == expected
    assert check_dataset("nnunet", own_root).ok  # the data set itself is fine
    with pytest.raises(SystemExit) as exit_info:
        cli(["check", "--dataset", "nnunet", "--root", str(own_root), "--datalist", str(path), "--quiet"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert all(f"ERROR {line}" in out for line in expected), out
    bundle = tmp_path / "run"
    with pytest.raises(Exception) as err:
        run(
            "training",
            config_file=str(ROOT / "bundles" / "brats_fpa" / "configs" / "train.json"),
            logging_file=False,
            bundle_root=str(bundle),
            task="nnunet",
            dataset_dir=str(own_root),
            data_list_file_path=str(path),
            **SMALL_RUN,
        )
    # training never reads the test list: its ghost case is evaluation's to refuse
    read = expected[:-1]
    assert any(all(line in m for line in read) for m in error_chain(err.value)), error_chain(err.value)
    assert not any("SYN_099" in m for m in error_chain(err.value))
    assert not (bundle / "cache").exists() and not (bundle / "models").exists()


def test_datalist_entries_outside_the_data_set_are_read_and_checked(own_root, tmp_path):
    """An external test set's files, which no case of the layout holds, are checked as the data
    set's own: NaN voxels and a label on another grid are named with the datalist."""
    external = tmp_path / "external"
    external.mkdir()
    image = nib.load(str(own_root / "imagesTr" / "SYN_001_0000.nii.gz"))
    data = np.asarray(image.dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, image.affine), str(external / "new_0000.nii.gz"))
    shutil.copy(own_root / "imagesTr" / "SYN_001_0001.nii.gz", external / "new_0001.nii.gz")
    label = nib.load(str(own_root / "labelsTr" / "SYN_001.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[..., :4], label.affine), str(external / "new.nii.gz"))
    item = {"case": "new", "image": [str(external / f"new_000{i}.nii.gz") for i in (0, 1)]}
    path = tmp_path / "external.json"
    path.write_text(json.dumps({"test": [{**item, "label": str(external / "new.nii.gz")}]}))
    problems = [str(p) for p in check_dataset("nnunet", own_root, datalist=path).problems]
    assert problems == [
        f"new: new_0000.nii.gz (in {path}): 1 NaN and 0 Inf voxels: give them a number and save the file again (e.g. 0 "
        "outside the field of view: numpy.nan_to_num)",
        f"new: new.nii.gz (in {path}): shape (90, 84, 4) differs from new_0000.nii.gz (90, 84, 8): resample it onto "
        "that file's grid (by nearest neighbour, MONAI's ResampleToMatch(mode='nearest'))",
    ]
    with pytest.raises(ValueError, match="data check failed") as err:
        prepare_data("nnunet", own_root, path, splits=["test"])
    assert problems[0] in str(err.value)
    path.write_text(json.dumps({"test": [item]}))  # evaluation scores every entry against its label
    assert [str(p) for p in check_dataset("nnunet", own_root, datalist=path).problems] == [
        f"new: {path}: no 'label' (every test entry needs one)"
    ]


def test_content_mistakes_say_what_to_do(own_root, tmp_path):
    """The usual mistakes in own volumes are named with what to do about them: channels stacked in
    one 4-D file (or a 4-D file of one volume), a label stored transposed, NaN voxels."""
    root = copy(own_root, tmp_path)

    def rewrite(name, change):
        path = root / name
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(change(np.asarray(img.dataobj)), img.affine), str(path))

    rewrite("imagesTr/SYN_001_0000.nii.gz", lambda a: np.stack([a, a, a], axis=-1))
    rewrite("imagesTr/SYN_002_0001.nii.gz", lambda a: a[..., None])
    rewrite("labelsTr/SYN_003.nii.gz", lambda a: np.ascontiguousarray(a.transpose(1, 0, 2)))
    rewrite(
        "imagesTr/SYN_004_0001.nii.gz", lambda a: np.where(np.arange(a.size).reshape(a.shape) < 3, np.nan, a)
    )
    problems = [str(p) for p in check_dataset("nnunet", root).problems]
    assert problems == [
        "SYN_001: SYN_001_0000.nii.gz: expected a non-empty 3-D volume, got shape (90, 84, 8, 3) (a 4-D file of 3 "
        "volumes: the nnU-Net layout keeps one 3-D file per channel, <case>_0000, <case>_0001, ..., and a label map "
        "of one volume)",
        "SYN_002: SYN_002_0001.nii.gz: expected a non-empty 3-D volume, got shape (90, 84, 8, 1) (a 4-D file of one "
        "volume: save it as 3-D, e.g. nibabel.squeeze_image)",
        "SYN_003: labelsTr/SYN_003.nii.gz: shape (84, 90, 8) differs from SYN_003_0000.nii.gz (90, 84, 8) (the same sizes in "
        "another axis order: stored transposed?)",
        "SYN_004: SYN_004_0001.nii.gz: 3 NaN and 0 Inf voxels: give them a number and save the file again (e.g. 0 "
        "outside the field of view: numpy.nan_to_num)",
    ]


def test_a_misnamed_label_is_named_once_with_its_fix(own_root, tmp_path):
    """``labelsTr/<case>_0000.nii.gz`` (a label copied with its image's name) or ``<case>.nii`` in a
    ``.nii.gz`` data set is one problem that says how to rename it, not a missing label (plus a label
    without images); a stray one beside the right label is still a label without images."""
    from pam_monai.engines.infer import find_inference_cases

    root = copy(own_root, tmp_path)
    (root / "labelsTr" / "SYN_001.nii.gz").rename(root / "labelsTr" / "SYN_001_0000.nii.gz")
    shutil.copy(root / "labelsTr" / "SYN_002.nii.gz", root / "labelsTr" / "SYN_002_0000.nii.gz")
    nib.save(nib.load(str(root / "labelsTr" / "SYN_003.nii.gz")), str(root / "labelsTr" / "SYN_003.nii"))
    (root / "labelsTr" / "SYN_003.nii.gz").unlink()
    assert [str(p) for p in check_dataset("nnunet", root).problems] == [
        "SYN_001: labelsTr/SYN_001_0000.nii.gz: a label file is named <case>.nii.gz, without a channel number: "
        "rename it SYN_001.nii.gz",
        "SYN_003: labelsTr/SYN_003.nii: a label file of type '.nii', not this data set's (.nii.gz): save it as "
        "SYN_003.nii.gz",
        "SYN_002_0000: labelsTr/SYN_002_0000.nii.gz: label without images",
    ]
    shutil.rmtree(root / "imagesTs")  # inference on imagesTr: its labels are not inference's concern
    assert len(find_inference_cases("nnunet", root)) == 6


def test_case_ids_with_spaces_and_dots_work_and_a_trailing_space_is_named(own_root, tmp_path):
    """Case IDs are file names up to the channel number: spaces and dots inside are read as they
    are, and a space at the end (an export's slip, unseen in logs, metrics.csv and mask names) is a
    warning naming the case."""
    root = copy(own_root, tmp_path)
    for old, new in (("SYN_001", "pat 1.a"), ("SYN_002", "SYN_002 ")):
        for path in sorted((root / "imagesTr").glob(f"{old}_*")):
            path.rename(path.with_name(path.name.replace(old, new)))
        (root / "labelsTr" / f"{old}.nii.gz").rename(root / "labelsTr" / f"{new}.nii.gz")
    report = check_dataset("nnunet", root)
    assert report.ok and {"pat 1.a", "SYN_002 "} <= {c.case for c in report.cases}
    assert [str(w) for w in report.warnings] == [
        "SYN_002 : SYN_002 _0000.nii.gz: case ID 'SYN_002 ' begins or ends with white space, which logs, metrics.csv "
        "and the mask names carry unseen: rename its files"
    ]


def test_datalist_folds_are_checked(own_root, tmp_path):
    """A cross-validation entry without a fold (get_split said so without naming the datalist or
    the case) or with one beyond n_folds (trained on in every fold, never tested) is named."""
    datalist = build_datalist("nnunet", own_root)
    datalist["training"][0]["fold"] = 7
    datalist["training"][1].pop("fold")
    path = tmp_path / "folds.json"
    path.write_text(json.dumps(datalist))
    with pytest.raises(ValueError) as err:
        prepare_data("nnunet", own_root, path)
    assert str(err.value).splitlines()[1:] == [
        f"SYN_001: {path}: 'fold' 7: cross-validation entries need a fold 0..4 (python -m pam_monai datalist writes "
        "them)",
        f"SYN_002: {path}: no 'fold': cross-validation entries need a fold 0..4 (python -m pam_monai datalist writes "
        "them), or remove every 'fold' and list the validation cases under 'validation' (a split of your own)",
    ]


def test_inference_names_every_input_problem_in_one_list(tmp_path):
    """A folder to segment with a case missing a channel, one with an extra channel, NaN voxels and
    a truncated file: one refusal names all four (file and problem) before any case is predicted,
    not the layout first and the contents after those are fixed. Labels beside the images are not
    inference's concern: a truncated one neither refuses nor stops the run."""
    import torch

    from pam_monai.engines import CasePredictor, find_inference_cases

    root = synth("nnunet", tmp_path / "Dataset934_Broken", cases=2, slices=3, test_cases=5, size=(40, 40))
    new = root / "imagesTs"
    (new / "SYN_003_0001.nii.gz").unlink()
    shutil.copy(new / "SYN_004_0001.nii.gz", new / "SYN_004_0002.nii.gz")
    img = nib.load(str(new / "SYN_005_0000.nii.gz"))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[:2] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(new / "SYN_005_0000.nii.gz"))
    truncated = (new / "SYN_006_0001.nii.gz").read_bytes()
    (new / "SYN_006_0001.nii.gz").write_bytes(truncated[: len(truncated) // 2])
    spec = get_spec("nnunet", root=root)
    with pytest.raises(ValueError) as err:
        find_inference_cases(spec, new)
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"nnunet: refusing to infer on {new}; fix these inputs first")
    assert sorted(lines[1:]) == [
        "SYN_003: SYN_003_0001.nii.gz: missing channel 1 ('ADC'): each case needs one file per channel (_0000 to "
        "_0001): add SYN_003_0001.nii.gz, or move the case's other files out",
        "SYN_004: SYN_004_0002.nii.gz: channel 0002, but the data set has 2 channels",
        f"SYN_005: SYN_005_0000.nii.gz: {2 * 40 * 3:,} NaN and 0 Inf voxels: give them a number and save the file "
        "again (e.g. 0 outside the field of view: numpy.nan_to_num)",
        "SYN_006: SYN_006_0001.nii.gz: unreadable or truncated file (EOFError: Compressed file ended before the "
        "end-of-stream marker was reached): copy or convert it again, or leave the case out",
    ]

    class Pointwise(torch.nn.Module):
        def forward(self, x):
            return 10.0 * x[:, :1]

    shutil.rmtree(new)  # imagesTr and its labels: a truncated label does not matter to inference
    label = root / "labelsTr" / "SYN_001.nii.gz"
    label.write_bytes(label.read_bytes()[:200])
    items = find_inference_cases(spec, root)
    written = CasePredictor(Pointwise(), items, spec, str(tmp_path / "out")).run()
    assert sorted(p.name for p in written) == ["SYN_001_seg.nii.gz", "SYN_002_seg.nii.gz"]


@pytest.mark.parametrize("inside", [False, True])
def test_bundle_prints_a_train_command_that_runs_in_a_shell_for_paths_with_spaces(
    own_root, tmp_path, monkeypatch, capsys, inside
):
    """The command ``python -m pam_monai bundle`` prints to train is quoted for the shell: copied as
    printed, a bundle folder with spaces or non-ASCII letters is one argument (unquoted, ``cd``
    got three)."""
    import shlex

    from pam_monai.cli import main

    work = tmp_path / "my work"
    work.mkdir()
    monkeypatch.chdir(work)
    output = "my bündles/lesion_fpa" if inside else str(tmp_path / "shared models" / "lesion_fpa")
    main(["bundle", "--dataset_dir", str(own_root), "--output", output, "--no_check"])
    command = shlex.split(capsys.readouterr().out.split("; train: ", 1)[1])
    bundle = (work / output).resolve()
    if inside:  # from the working folder: the config's path
        assert (
            work / command[command.index("--config_file") + 1]
        ).resolve() == bundle / "configs" / "train.json"
    else:  # elsewhere: cd into the bundle, then its own configs/
        assert command[:2] == ["cd", str(bundle)] and command[2] == "&&"
        assert command[-2:] == ["--config_file", "configs/train.json"]


def test_a_file_given_as_the_data_set_folder_names_its_folder(own_root, tmp_path):
    """--root naming dataset.json itself or an image file (a shell's completion) says it is a file
    and which folder to pass; it read '<file>/ is a folder of the data set', or nothing."""
    root = copy(own_root, tmp_path / "set")
    with pytest.raises(
        FileNotFoundError,
        match=rf"dataset.json is a file, not a folder: pass the data set's folder, {re.escape(str(root))}$",
    ):
        get_spec("nnunet", root=root / "dataset.json")
    image = next((root / "imagesTr").glob("*_0000.nii.gz"))
    with pytest.raises(
        FileNotFoundError,
        match=rf"{image.name} is a file, not a folder: pass the data set's folder, {re.escape(str(root))}$",
    ):
        check_dataset("nnunet", image)


def test_an_image_file_given_as_the_inference_input_folder_names_its_folder(own_root, tmp_path):
    """--input_dir naming one case's image file (a shell's completion) says it is a file and which
    folder to pass; it read 'input folder not found', of a file that is there."""
    from pam_monai.engines.infer import find_inference_cases

    image = next((own_root / "imagesTr").glob("*_0000.nii.gz"))
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(str(image))} is a file, not a folder: --input_dir takes a folder of cases .*"
        rf"pass {re.escape(str(image.parent))} \(every case in it is segmented\)",
    ):
        find_inference_cases("nnunet", image)
    with pytest.raises(ValueError, match="input folder not found"):
        find_inference_cases("nnunet", tmp_path / "missing")


def test_foreground_outside_the_crop_is_warned_about_with_the_crop_that_keeps_it(own_root):
    """A --crop_size that cuts foreground was warned about as 'N foreground voxels lie outside the
    centre crop', without the crop or what to do; the warning now names the crop and the smallest
    --crop_size (in steps of 16) that keeps the case's foreground, and that crop does keep it, where
    16 less along an axis it grew along does not."""
    from pam_monai.data.nnunet import nnunet_spec

    def cut(crop) -> dict[str, tuple[int, int]]:
        """{case: the crop its warning suggests} of the cases whose foreground ``crop`` cuts."""
        report = check_dataset(nnunet_spec(own_root, crop_size=crop), own_root)
        found = {}
        for w in report.warnings:
            m = re.search(
                r"outside the centre crop (\d+)x(\d+), .*--crop_size of at least \"\[(\d+), (\d+)\]\"",
                w.message,
            )
            if m:
                assert tuple(map(int, m.groups()[:2])) == tuple(crop)
                found[w.case] = (int(m[3]), int(m[4]))
        return found

    crop = (32, 32)
    suggested = cut(crop)
    assert suggested  # the synthetic tumours reach beyond a 32 x 32 centre crop
    for case, keeping in suggested.items():
        assert case not in cut(keeping)
        for axis in (0, 1):
            if keeping[axis] > crop[axis]:
                less = list(keeping)
                less[axis] -= 16
                assert case in cut(tuple(less))
    assert not cut(tuple(max(k[axis] for k in suggested.values()) for axis in (0, 1)))


def test_a_case_whose_images_repeat_another_case_s_is_named(own_root, tmp_path):
    """The same scan under two case IDs (exported twice) passed the check in silence; the 5-fold split
    can then test the model on a copy of a training case, inflating every metric. The check names the
    copy and the case it repeats (voxels of every channel equal; the label need not be)."""
    root = copy(own_root, tmp_path)
    for source in (root / "imagesTr").glob("SYN_001_*"):
        shutil.copy(source, source.with_name(source.name.replace("SYN_001", "SYN_007")))
    shutil.copy(root / "labelsTr" / "SYN_002.nii.gz", root / "labelsTr" / "SYN_007.nii.gz")
    spec = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**spec, "numTraining": 7}))
    report = check_dataset("nnunet", root)
    repeated = [str(w) for w in report.warnings if "the same voxels" in w.message]
    assert repeated == [
        "SYN_007: image: the same voxels as SYN_001 in every channel: one scan under two case IDs? The "
        "cross-validation may test the model on a copy of a case it trained on; remove one, or keep both in one "
        "fold with a datalist (data_list_file_path)"
    ]
    assert report.ok
    assert not [w for w in check_dataset("nnunet", own_root).warnings if "the same voxels" in w.message]


def test_a_wrong_data_set_folder_is_named_with_the_one_meant(own_root, tmp_path):
    """A root without dataset.json says which folder was meant: the data set's own for its imagesTr/,
    one of the data sets for nnUNet_raw/ itself, and that a mistyped one does not exist."""
    raw = tmp_path / "nnUNet_raw"
    root = copy(own_root, raw)
    with pytest.raises(
        FileNotFoundError,
        match=rf"imagesTr/ is a folder of the data set: pass the data set's own folder, {re.escape(str(root))}$",
    ):
        get_spec("nnunet", root=root / "imagesTr")
    with pytest.raises(
        FileNotFoundError,
        match=rf"{re.escape(str(raw))} holds data sets: pass one of them, {re.escape(str(root))}$",
    ):
        check_dataset("nnunet", raw)
    with pytest.raises(
        FileNotFoundError, match=rf"{re.escape(str(raw / 'Dataset900_Tumor'))} does not exist$"
    ):
        build_datalist("nnunet", raw / "Dataset900_Tumor")


@pytest.mark.parametrize(
    "folder, name", [("HGG", "brats"), ("TRAINING", "isles"), ("leftImg8bit", "cityscapes")]
)
def test_a_paper_data_set_given_as_own_data_names_its_layout(tmp_path, folder, name):
    """BraTS given as own data (``--task nnunet``, ``pam_monai bundle``) said only "dataset.json not
    found: own data needs the nnU-Net v2 raw layout", as if the data were in no layout at all."""
    (tmp_path / "data" / folder).mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError,
        match=rf"holds the {name} layout \({folder}/\): the {name} bundles read it as it is \(without --task "
        rf"nnunet\), as do check and score with --dataset {name}$",
    ):
        get_spec("nnunet", root=tmp_path / "data")


def test_images_of_another_file_type_say_to_convert_them_or_set_file_ending(own_root, tmp_path):
    """Volumes saved as .nii under a .nii.gz file_ending: each is named with both fixes (convert it,
    or set dataset.json's file_ending)."""
    root = copy(own_root, tmp_path)
    image = root / "imagesTr" / "SYN_001_0000.nii.gz"
    nib.save(nib.load(str(image)), str(root / "imagesTr" / "SYN_001_0000.nii"))
    image.unlink()
    problems = [str(p) for p in check_dataset("nnunet", root).problems]
    assert (
        "SYN_001: SYN_001_0000.nii: file type '.nii' is not this data set's (.nii.gz): convert it to .nii.gz, "
        "or, if every image and label is a .nii file, set dataset.json's file_ending to '.nii'" in problems
    ), problems


def test_a_data_set_of_another_file_type_is_one_line_with_the_count_and_both_endings(own_root, tmp_path):
    """A whole set saved as .nii under a .nii.gz file_ending gave one ERROR line per image file (12 for
    6 two-channel cases), each with the same advice: one line now, with the count, the ending found,
    the one expected and a few of the files."""
    root = copy(own_root, tmp_path)
    images = sorted((root / "imagesTr").glob("*.nii.gz"))
    for image in images:
        nib.save(nib.load(str(image)), str(image.with_name(image.name[: -len(".gz")])))
        image.unlink()
    problems = [str(p) for p in check_dataset("nnunet", root).problems]
    other_type = [p for p in problems if "'.nii'" in p]
    assert other_type == [
        f"{root.name}: imagesTr: {len(images)} image files of type '.nii' ({images[0].name[: -len('.gz')]}, "
        f"{images[1].name[: -len('.gz')]}, {images[2].name[: -len('.gz')]}, ...), not this data set's (.nii.gz): "
        "convert them to .nii.gz, or, if every image and label is a .nii file, set dataset.json's file_ending to "
        "'.nii'"
    ], problems


@pytest.mark.parametrize("images, label", [("NFD", "NFC"), ("NFC", "NFD")])
def test_a_label_named_in_another_unicode_form_is_named_once_with_the_fix(own_root, tmp_path, images, label):
    """Accented case names copied from macOS are NFD, others NFC: the same name on screen, other bytes.
    Such a label was reported twice under one shown name ('missing label' and 'label without
    images'); now once, with the forms and the fix."""
    import unicodedata

    root = copy(own_root, tmp_path)
    case = unicodedata.normalize(images, "patiënt")
    for path in sorted((root / "imagesTr").glob("SYN_001_*")):
        path.rename(path.with_name(path.name.replace("SYN_001", case)))
    (root / "labelsTr" / "SYN_001.nii.gz").rename(
        root / "labelsTr" / f"{unicodedata.normalize(label, 'patiënt')}.nii.gz"
    )
    problems = check_dataset("nnunet", root).problems
    assert len(problems) == 1 and problems[0].case == case, [str(p) for p in problems]
    assert (
        f"named as case {case!r} but with its accents stored otherwise (Unicode {label}; the images' names are "
        f"{images}, macOS writes NFD), so the names differ byte for byte" in str(problems[0])
    )


def test_dataset_json_is_read_as_utf8_with_or_without_a_byte_order_mark(own_root, tmp_path):
    """dataset.json saved by a Windows editor starts with a UTF-8 byte-order mark (refused as 'not
    readable JSON'); its accented label names are read; a file in another encoding is named with the
    fix."""
    root = copy(own_root, tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "nécrose": 1, "œdème": 2, "actif": 3}
    text = json.dumps(meta, ensure_ascii=False)
    (root / "dataset.json").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert get_spec("nnunet", root=root).resolve_labels("œdème")[0] == (2,)
    (root / "dataset.json").write_bytes(text.encode("cp1252"))
    with pytest.raises(
        ValueError, match=r"dataset.json: not UTF-8 text \(.*\): save it as UTF-8, as JSON files are"
    ):
        get_spec("nnunet", root=root)


def test_channel_files_numbered_from_0001_are_named_with_the_renaming(own_root, tmp_path):
    """Channels numbered from 0001 (not nnU-Net's 0000): the file one past the last channel says so,
    with the renaming; a case that has its _0000 file keeps the plain message."""
    root = copy(own_root, tmp_path)
    for case in ("SYN_001", "SYN_002"):
        images = root / "imagesTr"
        (images / f"{case}_0001.nii.gz").rename(images / f"{case}_0002.nii.gz")
        if case == "SYN_001":
            (images / f"{case}_0000.nii.gz").rename(images / f"{case}_0001.nii.gz")
    problems = {str(p) for p in check_dataset("nnunet", root).problems}
    assert (
        "SYN_001: SYN_001_0002.nii.gz: channel 0002, but the data set has 2 channels (numbered from 0000: rename "
        "SYN_001_0001 ... _0002 to _0000 ... _0001)" in problems
    ), problems
    assert "SYN_002: SYN_002_0002.nii.gz: channel 0002, but the data set has 2 channels" in problems


def test_a_label_named_in_other_letter_case_is_named_once_with_the_fix(own_root, tmp_path):
    """labelsTr/syn_001.nii.gz for images SYN_001_XXXX: one problem naming the case and the new name
    (was 'missing label' for SYN_001 and 'label without images' for syn_001)."""
    root = copy(own_root, tmp_path)
    (root / "labelsTr" / "SYN_001.nii.gz").rename(root / "labelsTr" / "syn_001.nii.gz")
    problems = [str(p) for p in check_dataset("nnunet", root).problems]
    assert problems == [
        "SYN_001: labelsTr/syn_001.nii.gz: named as case 'SYN_001' in other letter case (names are "
        "case-sensitive): rename it SYN_001.nii.gz"
    ]


def test_a_label_whose_file_ending_is_in_other_letter_case_is_named_with_the_fix(own_root, tmp_path):
    """labelsTr/SYN_001.NII.GZ (an export in capitals) was only 'missing label'."""
    root = copy(own_root, tmp_path)
    (root / "labelsTr" / "SYN_001.nii.gz").rename(root / "labelsTr" / "SYN_001.NII.GZ")
    problems = [str(p) for p in check_dataset("nnunet", root).problems]
    assert problems == [
        "SYN_001: labelsTr/SYN_001.NII.GZ: its file ending '.NII.GZ' is in other letter case (names are "
        "case-sensitive): rename it SYN_001.nii.gz"
    ]


def test_commands_in_messages_quote_paths_with_spaces(tmp_path, capsys):
    """The commands that messages and converters print to run next quote their paths: copied to a
    shell, a folder with spaces is one argument (it was split into several)."""
    import shlex

    from pam_monai.cli import main

    task = tmp_path / "my tasks" / "Task98_Tiny"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    for case in ("tiny_001", "tiny_002", "tiny_003"):
        data = np.random.default_rng(0).normal(size=(20, 18, 5, 2)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, affine), str(task / "imagesTr" / f"{case}.nii.gz"))
        nib.save(
            nib.Nifti1Image((data[..., 0] > 1).astype(np.uint8), affine),
            str(task / "labelsTr" / f"{case}.nii.gz"),
        )
    meta = {
        "name": "Tiny",
        "modality": {"0": "FLAIR", "1": "T2w"},
        "labels": {"0": "background", "1": "edema"},
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
            for c in ("tiny_001", "tiny_002", "tiny_003")
        ],
    }
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as err:
        get_spec("nnunet", root=task)
    command = shlex.split(str(err.value).split("convert it once: ", 1)[1])
    assert command[command.index("--task_dir") + 1] == str(task)

    out = tmp_path / "my data" / "Dataset098_Tiny"
    main(["convert_msd", "--task_dir", str(task), "--output", str(out)])
    command = shlex.split(capsys.readouterr().out.split("next: ", 1)[1])
    assert command[command.index("--root") + 1] == str(out)

    for image in (out / "imagesTr").iterdir():  # no <case>_0000 image to size the crop from
        image.unlink()
    with pytest.raises(Exception) as err:
        get_spec("nnunet", root=out)
    advice = str(err.value).split("to size the crop from; ", 1)[1].removesuffix(" lists what is there")
    assert shlex.split(advice)[-1] == str(out)


def test_an_image_folder_holding_convert_dicoms_record_alone_is_not_said_to_hold_folders(tmp_path):
    """An inference folder with convert_dicom's dicom_series.json but no image (a conversion that
    wrote none) is named with what it holds; it read 'only folders ()'."""
    from pam_monai.data.nnunet import scan

    (tmp_path / "dicom_series.json").write_text("{}")
    (problem,) = scan(tmp_path, channels=["CT"]).problems
    assert problem.message == "no <case>_0000.nii.gz image, only dicom_series.json"


def test_float64_voxels_past_float32s_range_are_refused_by_check_and_inference(tmp_path):
    """A float64 volume with a value past float32's range (a resampler's fill value, DBL_MAX) is
    finite on disk but Inf in the network's float32: its z-score statistics then flattened the whole
    case and inference wrote an empty mask without a word. Check and inference name the file."""
    from pam_monai.engines import input_problems

    root = synth("nnunet", tmp_path / "Dataset935_Huge", cases=2, slices=3, size=(40, 40))
    path = root / "imagesTr" / "SYN_001_0000.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).astype(np.float64)
    data[0, 0, 0] = np.finfo(np.float64).max
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    message = (
        "SYN_001: SYN_001_0000.nii.gz: 1 voxel beyond float32's range (|x| > 3.4e+38; the largest 1.8e+308), "
        "which turn Inf in the network's float32: give them a number in range and save the file again"
    )
    assert any(str(p).startswith(message) for p in check_dataset("nnunet", root).problems)
    spec = get_spec("nnunet", root=root)
    images = [str(path), str(root / "imagesTr" / "SYN_001_0001.nii.gz")]
    found, _, case = input_problems(spec, {"case": "SYN_001", "image": images})
    assert case is None and found[0].startswith(message)


def test_a_constant_channel_is_warned_about_as_an_all_zero_one(tmp_path):
    """A channel of one value everywhere (a placeholder for a missing scan) normalises to 0, as an
    all-zero one, which the check warns about: so does it for the constant one, with its value."""
    root = synth("nnunet", tmp_path / "Dataset936_Flat", cases=2, slices=3, size=(40, 40))
    for case, value in (("SYN_001", 5.0), ("SYN_002", 0.0)):
        path = root / "imagesTr" / f"{case}_0001.nii.gz"
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.full(img.shape, value, np.float32), img.affine), str(path))
    report = check_dataset("nnunet", root)
    assert report.ok and [str(w) for w in report.warnings] == [
        "SYN_001: SYN_001_0001.nii.gz: all voxels are 5: the channel holds no image (a placeholder?): give the "
        "case this channel's image",
        "SYN_002: SYN_002_0001.nii.gz: all voxels are zero",
    ]


def test_msd_task_with_channel_names_instead_of_modality(tmp_path):
    """An MSD-style dataset.json naming its channels "channel_names" (nnU-Net v2's word): its 4-D
    images are split by those channels, not refused as one channel 'image'."""
    from pam_monai.data.msd import convert_msd

    task = tmp_path / "Task97_MR"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    vol = np.arange(6 * 5 * 4 * 2, dtype=np.int16).reshape(6, 5, 4, 2)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(task / "imagesTr" / "mr_001.nii.gz"))
    nib.save(
        nib.Nifti1Image(np.zeros((6, 5, 4), np.uint8), np.eye(4)), str(task / "labelsTr" / "mr_001.nii.gz")
    )
    meta = {
        "channel_names": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "lesion"},
        "training": [{"image": "./imagesTr/mr_001.nii.gz", "label": "./labelsTr/mr_001.nii.gz"}],
    }
    (task / "dataset.json").write_text(json.dumps(meta))
    out = convert_msd(task, tmp_path / "out", progress=False)
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "T2", "1": "ADC"}
    adc = np.asarray(nib.load(str(out / "imagesTr" / "mr_001_0001.nii.gz")).dataobj)
    np.testing.assert_array_equal(adc, vol[..., 1])


def test_isles22_mask_shifted_off_the_dwi_grid_is_named_as_such(tmp_path):
    """A mask of the DWI's shape but another affine: the refusal says the affine differs (not
    "(6, 6, 4) differs from (6, 6, 4)") and nothing is written."""
    from pam_monai.data.isles22 import convert_isles22

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted = affine.copy()
    shifted[0, 3] = 5.0
    case = tmp_path / "root" / "sub-strokecase0001"
    case.mkdir(parents=True)
    for kind, a in (("dwi", affine), ("adc", affine), ("msk", shifted)):
        nib.save(
            nib.Nifti1Image(np.ones((6, 6, 4), np.float32), a),
            str(case / f"sub-strokecase0001_ses-0001_{kind}.nii.gz"),
        )
    with pytest.raises(
        ValueError, match=r"_msk.nii.gz: its affine differs from the DWI's \(largest difference 5\)"
    ):
        convert_isles22(tmp_path / "root", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_inference_takes_a_nonorm_channel_that_is_all_zeros_or_constant(tmp_path):
    """An all-zero or constant image channel is refused by inference (a placeholder for a missing
    scan: it normalises to zeros and gives the network nothing); a noNorm channel (a mask or map,
    fed as stored) holds values, not an image, and an empty or full mask is one of them: it was
    refused all the same. The z-score channel beside it is still refused when constant."""
    from pam_monai.engines import input_problems

    root = synth("nnunet", tmp_path / "Dataset937_Mask", cases=2, slices=3, size=(40, 40))
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T2", "1": "noNorm"}
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = get_spec("nnunet", root=root)
    for case, value in (("SYN_001", 0.0), ("SYN_002", 1.0)):
        path = root / "imagesTr" / f"{case}_0001.nii.gz"
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.full(img.shape, value, np.float32), img.affine), str(path))
        images = [str(root / "imagesTr" / f"{case}_0000.nii.gz"), str(path)]
        found, _, read = input_problems(spec, {"case": case, "image": images})
        assert found == [] and read is not None, found
    # nor does the check call the full mask a placeholder for a missing image
    warned = [str(w) for w in check_dataset(spec, root).warnings]
    assert warned == ["SYN_001: SYN_001_0001.nii.gz: all voxels are zero"], warned
    path = root / "imagesTr" / "SYN_001_0000.nii.gz"
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.full(img.shape, 7.0, np.float32), img.affine), str(path))
    found, _, _ = input_problems(
        spec, {"case": "SYN_001", "image": [str(path), str(path).replace("_0000", "_0001")]}
    )
    assert found == [
        "SYN_001: SYN_001_0000.nii.gz: modality is constant (7 everywhere): give the case this channel's image (the "
        "network was trained with every channel and needs each one)"
    ]


def _own_split(root: Path, path: Path, **lists: list[int]) -> Path:
    """A hand-written datalist (MONAI's decathlon JSON: image and label, no case, no fold) of the
    cases at the given indices of each list."""
    items = [c.to_item(relative_to=root) for c in scan_cases("nnunet", root).cases]
    data = {
        key: [{"image": items[i]["image"], "label": items[i]["label"]} for i in at]
        for key, at in lists.items()
    }
    path.write_text(json.dumps(data))
    return path


def test_a_split_of_your_own_is_used_as_written(own_root, tmp_path):
    """A datalist with the user's own 'training' / 'validation' / 'test' lists and no 'fold' (MONAI's
    convention) was refused ("datalist entries need a 'fold' field"): it is trained, validated and
    tested on as written, checked, and is one fixed split (--fold / --folds other than 0 refused)."""
    from pam_monai.experiments.runner import _folds

    path = _own_split(own_root, tmp_path / "mine.json", training=[4, 0, 2], validation=[5], test=[1, 3])
    data = prepare_data("nnunet", own_root, path)  # checks the data set and the datalist first
    assert {s: [e["case"] for e in data[s]] for s in ("train", "val", "test")} == {
        "train": ["SYN_005", "SYN_001", "SYN_003"],
        "val": ["SYN_006"],
        "test": ["SYN_002", "SYN_004"],
    }
    assert check_dataset("nnunet", own_root, datalist=path).ok
    with pytest.raises(
        ValueError, match=r"fold 1: datalist gives one fixed split of its own .*pass --fold 0.*mine.json"
    ):
        prepare_data("nnunet", own_root, path, fold=1, check=False)
    assert _folds("all", "nnunet", str(path)) == [0] and _folds("0", "nnunet", str(path)) == [0]
    with pytest.raises(ValueError, match=r"--folds 0,1: .*mine.json gives one fixed split .*pass --folds 0"):
        _folds("0,1", "nnunet", str(path))
    assert _folds("all", "nnunet", None) == list(range(5))  # cross-validation as before
    no_test = _own_split(own_root, tmp_path / "no_test.json", training=[0, 1, 2], validation=[3])
    assert [e["case"] for e in prepare_data("nnunet", own_root, no_test, splits=["train", "val"])["val"]] == [
        "SYN_004"
    ]
    with pytest.raises(
        ValueError, match=r"no 'test' list .*add a 'test' list to evaluate on, or .*--eval_split val"
    ):
        prepare_data("nnunet", own_root, no_test, splits=["test"], check=False)


def test_an_experiment_on_a_split_of_your_own_without_a_test_list_is_refused_up_front(own_root, tmp_path):
    """A grid scores every run on its test split: a split of your own without a 'test' list was
    refused by the data preparation with advice the grid refuses (``--eval_split val``)."""
    from pam_monai.experiments.runner import run_experiment

    path = _own_split(own_root, tmp_path / "mine.json", training=[0, 1, 2], validation=[3])
    with pytest.raises(ValueError) as err:
        run_experiment(
            "nnunet",
            networks="fpa",
            folds="all",
            output=str(tmp_path / "out"),
            figures=False,
            dataset_dir=str(own_root),
            data_list_file_path=str(path),
        )
    assert str(err.value) == (
        f"{path} gives a split of its own without a 'test' list, and a grid scores every run on its test split: "
        "add a 'test' list of the cases to score, or train and evaluate with the bundle (evaluate.json "
        "--eval_split val scores the validation cases)"
    )
    assert not (tmp_path / "out").exists()  # refused before any run


def test_a_split_of_your_own_is_refused_when_unclear(own_root, tmp_path):
    """A case in two lists, a 'training' list with some entries with a 'fold' and some without,
    and no 'fold' and no 'validation' list are refused, each saying what to do."""
    twice = _own_split(own_root, tmp_path / "twice.json", training=[0, 1, 2], validation=[2], test=[3])
    with pytest.raises(ValueError, match=r"SYN_003: .*twice.json: listed twice \(training and validation\)"):
        prepare_data("nnunet", own_root, twice)
    mixed = json.loads(
        _own_split(own_root, tmp_path / "mixed.json", training=[0, 1, 2], validation=[3]).read_text()
    )
    mixed["training"][1]["fold"] = 0
    with pytest.raises(
        ValueError,
        match=r"'training' entries SYN_001, SYN_003 have no 'fold' while 1 others have one: give each a 'fold' .*"
        r"or remove every 'fold' and list the validation cases under 'validation'",
    ):
        get_split(get_spec("nnunet", root=own_root), mixed, "train", root=own_root)
    none = _own_split(own_root, tmp_path / "none.json", training=[0, 1, 2], test=[3])
    both_ways = (
        "no 'training' entry has a 'fold', and there is no 'validation' list: add a 'validation' list (a split of "
        "your own, used as written), or build cross-validation folds with python -m pam_monai datalist"
    )
    with pytest.raises(ValueError) as err:
        prepare_data("nnunet", own_root, none)  # the checker: once, not once per entry
    assert str(err.value).splitlines()[1:] == [f"training: {none}: {both_ways}"]
    with pytest.raises(ValueError, match=re.escape(both_ways)):
        prepare_data("nnunet", own_root, none, check=False)


def test_a_missing_labels_folder_says_where_labels_go(own_root, tmp_path):
    """imagesTr without labelsTr: each case's 'missing label (no labelsTr folder)' says where its label goes."""
    root = copy(own_root, tmp_path)
    shutil.rmtree(root / "labelsTr")
    problems = {str(p) for p in check_dataset("nnunet", root).problems}
    assert (
        "SYN_001: labelsTr/SYN_001.nii.gz: missing label (no labelsTr folder): put each case's label map in "
        "labelsTr/<case>.nii.gz" in problems
    )


def test_bundle_of_another_network_names_the_flag(own_root, tmp_path):
    """'network must be one of [...]' named neither the flag nor where the baselines go."""
    from pam_monai.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["bundle", "--dataset_dir", str(own_root), "--output", str(tmp_path / "b"), "--network", "unet"])
    assert (
        "--network must be one of fpa, rfna, got 'unet': pass --network fpa or rfna (every other network of the "
        "registry trains from the bundle with --network_name)" in str(exit_.value.code)
    )
    assert not (tmp_path / "b").exists()


def _tree(folder: Path) -> dict[str, bytes | None] | None:
    """Every entry below ``folder``: a file's bytes, None for a folder; None when ``folder`` is missing."""
    if not folder.exists():
        return None
    return {
        p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")
    }


# every call of the rebuild that changes the disk, where a kill or an error can strike
_DISK_CALLS = [(os, "rename"), (os, "replace"), (os, "link"), (os, "mkdir"), (os, "unlink"), (os, "rmdir"),
               (os, "symlink"), (shutil, "copy2"), (Path, "write_text")]  # fmt: skip


def _fail_at(k: int, fail, monkeypatch) -> list[int]:
    """Patch the disk calls (and the folder exchange) to call ``fail`` instead of their ``k``-th one."""
    from pam_monai import atomic

    calls = [0]

    def counted(original):
        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                fail()
            return original(*args, **kwargs)

        return call

    for owner, name in [*_DISK_CALLS, (atomic, "_exchange")]:
        monkeypatch.setattr(owner, name, counted(getattr(owner, name)))
    return calls


def test_a_bundle_folder_that_is_a_mount_point_is_refused_before_the_data_are_read(
    own_root, tmp_path, monkeypatch
):
    """A bundle folder that is a mount point (``docker -v $PWD:/ws``, then ``--output .``) cannot be
    renamed, so its final swap failed with EBUSY after minutes of checking the data set: refused at
    once, naming the folder and what to do, with nothing written."""
    import errno

    from pam_monai.bundle_templates import own_data

    bundle = tmp_path / "tumour_fpa"
    bundle.mkdir()
    mounted = os.path.ismount
    monkeypatch.setattr(own_data.os.path, "ismount", lambda p: Path(p) == bundle.resolve() or mounted(p))
    monkeypatch.setattr(own_data, "nnunet_spec", lambda *a, **k: pytest.fail("the data set was read"))
    with pytest.raises(OSError, match=r"tumour_fpa: cannot be replaced: it is a mount point") as e:
        own_data.own_data_bundle(own_root, "fpa", bundle, crop_size=96, overwrite=True, check=False)
    assert e.value.errno == errno.EBUSY and "write into a new sub-folder of it" in str(e.value)
    assert not any(bundle.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["tumour_fpa"]


def test_a_bundle_a_training_writes_into_is_not_rebuilt(own_root, tmp_path, monkeypatch):
    """A checkpoint saved into models/ while ``bundle --overwrite`` swaps the folder would land in
    the old folder and be deleted with it: the rebuild is refused while a training holds models/
    or eval/, naming the bundle and the holder, and goes ahead once the training is over."""
    from pam_monai import runlock
    from pam_monai.bundle_templates.own_data import own_data_bundle
    from pam_monai.runlock import LOCK_NAME, RunLockError

    monkeypatch.chdir(tmp_path)
    bundle = own_data_bundle(own_root, "fpa", tmp_path / "tumour_fpa", crop_size=96, check=False)
    before = (bundle / "configs" / "inference.json").read_text()
    live = os.getppid()  # another live process on this host: the training
    holder = {"pid": live, "host": runlock._HOST, "hostname": "here", "proc_start": runlock._proc_start(live)}
    for held in ("models", "eval"):
        lock = bundle / held / LOCK_NAME
        lock.parent.mkdir(exist_ok=True)
        lock.write_text(json.dumps({**holder, "started": "2026-01-02T03:04:05+0000", "token": "t"}))
        with pytest.raises(RunLockError, match=rf"tumour_fpa is not rebuilt while a training writes.*{held}"):
            own_data_bundle(own_root, "fpa", bundle, crop_size=112, overwrite=True, check=False)
        assert (bundle / "configs" / "inference.json").read_text() == before
        lock.unlink()  # the training is over
    own_data_bundle(own_root, "fpa", bundle, crop_size=112, overwrite=True, check=False)
    assert (bundle / "configs" / "inference.json").read_text() != before


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two_renames"])
@pytest.mark.parametrize("interruption", ["kill", "error"])
def test_an_interrupted_rebuild_leaves_the_old_or_the_new_bundle_whole(
    own_root, tmp_path, monkeypatch, exchange, interruption
):
    """``bundle --overwrite`` over an existing bundle, killed (SIGKILL: no clean-up runs) or failing
    at each of its disk calls in turn, leaves the whole old bundle or the whole new one, the
    user's models/, eval/ and own config with it, never configs of two builds; where folders cannot
    be exchanged in one step, a kill between the two renames is undone by the next rebuild (the
    old bundle back in place first). The next rebuild then leaves the new bundle and nothing else."""
    from pam_monai import atomic
    from pam_monai.bundle_templates import own_data
    from pam_monai.bundle_templates.own_data import own_data_bundle

    probe = [tmp_path / "probe_a", tmp_path / "probe_b"]
    for p in probe:
        p.mkdir()
    if exchange and not atomic._exchange(*probe):
        pytest.skip("this system or file system cannot exchange two folders in one step")
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # outside the bundles: configs that name no folder
    bundle = own_data_bundle(own_root, "fpa", tmp_path / "bundles" / "tumour_fpa", crop_size=96, check=False)
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"trained weights")
    (bundle / "eval").mkdir()
    (bundle / "eval" / "metrics.csv").write_text("case,dice\nSYN_006,0.8\n")
    (bundle / "configs" / "mine.json").write_text('{"epochs": 3}')
    pristine = Path(shutil.copytree(bundle, tmp_path / "pristine"))
    old = _tree(bundle)
    expected = Path(shutil.copytree(bundle, tmp_path / "expected" / "tumour_fpa"))
    own_data_bundle(own_root, "fpa", expected, crop_size=112, overwrite=True, check=False)
    new = _tree(expected)
    assert json.loads(new["configs/inference.json"]) != json.loads(old["configs/inference.json"])
    assert new["models/model.pt"] == b"trained weights" and new["configs/mine.json"] == b'{"epochs": 3}'

    def rebuild():  # the new bundle's files as rendered above: the writing alone is under test here
        own_data._write_bundle(bundle.resolve(), files)

    files = {}
    with monkeypatch.context() as patch:
        patch.setattr(own_data, "_write_bundle", lambda target, rendered: files.update(rendered))
        own_data_bundle(own_root, "fpa", bundle, crop_size=112, overwrite=True, check=False)
    mine = f".tumour_fpa.pid{os.getpid()}@"
    k, finished = 0, False
    while not finished:
        k += 1
        with monkeypatch.context() as patch:
            if interruption == "kill":
                pid = os.fork()
                if pid == 0:  # the child: killed at its k-th disk call, no handler or finally runs
                    code = 1
                    try:
                        _fail_at(k, lambda: os._exit(9), patch)
                        rebuild()
                        code = 0
                    finally:
                        os._exit(code)
                code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                assert code in (0, 9), f"the rebuild failed at disk call {k} without being killed"
                finished = code == 0
            else:
                calls = _fail_at(k, lambda: (_ for _ in ()).throw(OSError(5, "interrupted")), patch)
                try:
                    rebuild()
                    finished = calls[0] < k
                except OSError as e:
                    assert "interrupted" in str(e)
        if interruption == "kill" and not exchange and not bundle.exists():
            atomic.recover_swap(bundle)  # as the next rebuild does first
        assert _tree(bundle) in (old, new), f"interrupted at disk call {k}: a mix of two builds"
        own_data_bundle(own_root, "fpa", bundle, crop_size=112, overwrite=True, check=False)
        # an error (not a kill) while removing the old bundle's copy leaves it to the next run's sweep
        left = [n for n in os.listdir(bundle.parent) if interruption == "kill" or not n.startswith(mine)]
        assert _tree(bundle) == new and left == ["tumour_fpa"], k
        shutil.rmtree(bundle.parent)
        shutil.copytree(pristine, bundle)
    assert k > 20  # every call above was interrupted once


def test_a_training_that_starts_while_the_bundle_is_rebuilt_keeps_its_checkpoint(
    own_root, tmp_path, monkeypatch
):
    """The rebuild checked for a training's lock only at its start, then read the data set (minutes
    with ``check``) and copied the bundle's files: a training that took models/ meanwhile and saved
    a checkpoint after that copy lost it with the old folder. The lock is checked again once the
    new bundle is made, just before the swap: the rebuild is refused and the checkpoint stays."""
    from pam_monai import runlock
    from pam_monai.bundle_templates.own_data import own_data_bundle
    from pam_monai.runlock import LOCK_NAME, RunLockError

    monkeypatch.chdir(tmp_path)
    bundle = own_data_bundle(own_root, "fpa", tmp_path / "tumour_fpa", crop_size=96, check=False)
    before = (bundle / "configs" / "inference.json").read_text()
    live = os.getppid()  # another live process on this host: the training
    holder = {"pid": live, "host": runlock._HOST, "hostname": "here", "proc_start": runlock._proc_start(live)}
    copytree = shutil.copytree

    def copy_while_a_training_starts(src, dst, *args, **kwargs):
        done = copytree(src, dst, *args, **kwargs)
        if Path(src) == bundle.resolve():  # the bundle's files are in the new one: the training saves now
            (bundle / "models").mkdir(exist_ok=True)
            (bundle / "models" / LOCK_NAME).write_text(json.dumps({**holder, "started": "now", "token": "t"}))
            (bundle / "models" / "checkpoint_last.pt").write_bytes(b"epoch 1")
        return done

    monkeypatch.setattr(shutil, "copytree", copy_while_a_training_starts)
    with pytest.raises(RunLockError, match=r"tumour_fpa is not rebuilt while a training writes.*models"):
        own_data_bundle(own_root, "fpa", bundle, crop_size=112, overwrite=True, check=False)
    assert (bundle / "models" / "checkpoint_last.pt").read_bytes() == b"epoch 1"
    assert (bundle / "configs" / "inference.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["tumour_fpa"]  # the new bundle's folder removed
