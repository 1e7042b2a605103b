"""Intensity normalisation per channel (pam_monai.data.intensity): nnU-Net's schemes chosen by
channel name, CT with the training set's foreground statistics, recorded with the model."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, SMALL_RUN, error_chain

from pam_monai.data import (
    SliceDataset,
    get_preprocess_transforms,
    get_spec,
    preprocess_case,
    scan_cases,
    synth,
)
from pam_monai.data.intensity import (
    PROPERTIES_KEY,
    ChannelNorm,
    channel_norms,
    normalize_channels,
    scheme_of,
)
from pam_monai.data.transforms import NormalizeChannelsd


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory) -> Path:
    return synth("nnunet", tmp_path_factory.mktemp("ct") / "Dataset901_CT", cases=5, slices=6, ct=True)


def test_channel_names_choose_the_scheme():
    assert [scheme_of(n) for n in ("CT", "ct", "noNorm", "rescale_to_0_1", "RGB_to_0_1", "T2", "zscore")] == [
        "ct",
        "ct",
        "nonorm",
        "rescale_to_0_1",
        "rgb_to_0_1",
        "zscore",
        "zscore",
    ]
    with pytest.raises(
        ValueError, match=r"channel 1 \('CT'\) is CT, .*foreground_intensity_properties_per_channel\['1'\]"
    ):
        channel_norms(["T2", "CT"], {"0": {"mean": 1.0}}, where="x/dataset.json")


EVERY_SCHEME = (
    ChannelNorm("zscore"),
    ChannelNorm("ct", -100.0, 200.0, 50.0, 40.0),
    ChannelNorm("nonorm"),
    ChannelNorm("rescale_to_0_1"),
    ChannelNorm("rgb_to_0_1"),
)


def test_each_scheme_numpy_and_monai_agree():
    rng = np.random.default_rng(0)
    image = rng.normal(40, 300, (5, 12, 10, 3)).astype(np.float32)
    image[0, :3] = 0  # zeros stay zero under the z-score
    norms = EVERY_SCHEME
    out = normalize_channels(image, norms)
    nz = image[0][image[0] != 0]
    np.testing.assert_allclose(
        out[0], np.where(image[0] != 0, (image[0] - nz.mean()) / nz.std(), 0), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(out[1], (np.clip(image[1], -100, 200) - 50) / 40, rtol=1e-6)
    np.testing.assert_array_equal(out[2], image[2])
    lo, hi = image[3].min(), image[3].max()
    np.testing.assert_allclose(out[3], (image[3] - lo) / (hi - lo), atol=1e-6)
    assert out[3].min() == 0 and out[3].max() == pytest.approx(1)
    np.testing.assert_allclose(out[4], image[4] / 255, rtol=1e-6)
    monai = NormalizeChannelsd("image", norms)({"image": torch.from_numpy(image)})["image"]
    np.testing.assert_allclose(np.asarray(monai), out, rtol=1e-5, atol=1e-5)


def test_channel_normalisation_pickles_for_spawned_workers():
    """DataLoader workers are spawned on macOS and Windows: the transform is pickled to reach them
    (CT and ``nonorm`` channels held lambdas: "Can't pickle local object")."""
    image = {
        "image": torch.from_numpy(np.random.default_rng(1).normal(40, 300, (5, 6, 4)).astype(np.float32))
    }
    transform = NormalizeChannelsd("image", EVERY_SCHEME)
    copy = pickle.loads(pickle.dumps(transform))
    np.testing.assert_array_equal(np.asarray(copy(image)["image"]), np.asarray(transform(image)["image"]))


def test_ct_statistics_come_from_the_training_foreground(ct_root, tmp_path):
    spec = get_spec("nnunet", root=ct_root)
    cases = scan_cases(spec, ct_root).cases
    values = np.concatenate(
        [
            np.asarray(nib.load(str(c.channels["CT"])).dataobj)[
                np.asarray(nib.load(str(c.label)).dataobj) > 0
            ]
            for c in cases
        ]
    ).astype(np.float64)
    norm = spec.channel_norms[0]
    assert norm.scheme == "ct"
    assert (norm.lower, norm.upper, norm.mean, norm.std) == pytest.approx(
        (np.percentile(values, 0.5), np.percentile(values, 99.5), values.mean(), values.std())
    )
    # air (-1000 HU) is clipped to the lower bound; the padding is 0 after normalisation
    pre = preprocess_case(spec, cases[0].to_item())
    assert pre["image"].shape == (1, 96, 96, 6)  # 90 x 84 padded
    ct = np.asarray(nib.load(str(cases[0].channels["CT"])).dataobj).astype(np.float32)
    inside = pre["image"][0, 3:93, 6:90]
    np.testing.assert_allclose(
        inside, (np.clip(ct, norm.lower, norm.upper) - norm.mean) / norm.std, rtol=1e-5, atol=1e-5
    )
    assert not pre["image"][0, :3].any() and not pre["image"][0, :, :6].any()
    ref = get_preprocess_transforms(spec)(dict(cases[0].to_item()))
    np.testing.assert_allclose(np.asarray(ref["image"]), pre["image"], atol=1e-5)

    # nnU-Net's own fingerprint beside dataset.json is used as it is
    root = Path(shutil.copytree(ct_root, tmp_path / ct_root.name))
    stats = {"0": {"mean": 100.0, "std": 20.0, "percentile_00_5": 10.0, "percentile_99_5": 300.0}}
    (root / "dataset_fingerprint.json").write_text(json.dumps({PROPERTIES_KEY: stats}))
    assert get_spec("nnunet", root=root).channel_norms[0] == ChannelNorm("ct", 10.0, 300.0, 100.0, 20.0)
    # the slice cache is keyed by the statistics: other statistics, other cache files
    items = [c.to_item() for c in cases[:1]]
    a = SliceDataset(items, spec, cache_dir=tmp_path / "cache", progress=False)
    b = SliceDataset(items, get_spec("nnunet", root=root), cache_dir=tmp_path / "cache", progress=False)
    assert a.cache_paths(items[0])["image"] != b.cache_paths(items[0])["image"]
    assert not np.allclose(a[0]["image"].numpy(), b[0]["image"].numpy())


def test_unreadable_files_are_the_checkers_to_name(ct_root, tmp_path):
    from pam_monai.data import check_dataset

    root = Path(shutil.copytree(ct_root, tmp_path / ct_root.name))
    label = root / "labelsTr" / "SYN_002.nii.gz"
    label.write_bytes(label.read_bytes()[:200])  # truncated
    spec = get_spec("nnunet", root=root)  # statistics of the four readable cases
    assert spec.channel_norms[0] != get_spec("nnunet", root=ct_root).channel_norms[0]
    report = check_dataset("nnunet", root, progress=False)
    assert not report.ok and any(
        "SYN_002.nii.gz" in str(p) and "unreadable" in str(p) for p in report.problems
    )
    assert report.normalization[0].startswith("channel 0 'CT': CT: clip to [")
    for f in (root / "labelsTr").iterdir():
        f.write_bytes(f.read_bytes()[:200])
    report = check_dataset("nnunet", root, progress=False)  # no statistics at all: a report, not a crash
    assert not report.ok and any(
        "CT intensity statistics: none of the 5 training cases gives foreground values (label > 0) to take CT statistics from: 5 unreadable or mis-shaped, 0 with an empty label"
        in str(p)
        for p in report.problems
    )


def test_the_model_keeps_the_statistics_it_was_trained_with(ct_root, tmp_path):
    """Training records the CT statistics (model.json); evaluation and inference normalise with
    them even when the data set's own statistics have changed since."""
    from monai.bundle import ConfigParser, run

    configs = ROOT / "bundles" / "brats_fpa" / "configs"
    root = Path(shutil.copytree(ct_root, tmp_path / ct_root.name))
    common = {"bundle_root": str(tmp_path / "run"), "dataset_dir": str(root), "task": "nnunet"}
    run("training", config_file=str(configs / "train.json"), logging_file=False, **common, **SMALL_RUN)
    trained = get_spec("nnunet", root=root).channel_norms
    record = json.loads((tmp_path / "run" / "models" / "model.json").read_text())["run"]
    assert record["dataset_json"]["channel_names"] == {"0": "CT"}
    assert channel_norms(["CT"], record["dataset_json"][PROPERTIES_KEY]) == trained

    # new cases make other statistics: the data set now says another normalisation ...
    for f in (root / "imagesTr").glob("SYN_001_*"):
        img = nib.load(str(f))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 300, img.affine), str(f))
    assert get_spec("nnunet", root=root).channel_norms != trained

    def spec_of(*files):
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files])
        parser.update({**common, **SMALL_RUN})
        return parser.get_parsed_content("spec")

    # ... but evaluation and inference use the model's
    assert spec_of("train.json", "evaluate.json").channel_norms == trained
    assert spec_of("inference.json").channel_norms == trained
    run(
        "evaluating",
        config_file=[str(configs / "train.json"), str(configs / "evaluate.json")],
        logging_file=False,
        **common,
        **SMALL_RUN,
    )
    assert (tmp_path / "run" / "eval" / "metrics.csv").is_file()
    nets = {"network_options": SMALL_RUN["network_options"]}
    run("inferring", config_file=str(configs / "inference.json"), logging_file=False, **common, **nets)
    seg = nib.load(str(tmp_path / "run" / "predictions" / "SYN_006_seg.nii.gz"))
    assert seg.shape == (90, 84, 6)

    # resuming with the changed data would switch statistics part-way: refused by name
    with pytest.raises(Exception) as err:
        run(
            "training",
            config_file=str(configs / "train.json"),
            logging_file=False,
            **common,
            **SMALL_RUN,
            resume=True,
        )
    assert any("CT statistics: the weights were trained with {'0'" in m for m in error_chain(err.value))

    # a model whose record has no CT statistics (trained before CT normalisation) is refused
    meta_path = tmp_path / "run" / "models" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["run"]["dataset_json"][PROPERTIES_KEY]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(Exception) as err:
        run("inferring", config_file=str(configs / "inference.json"), logging_file=False, **common, **nets)
    assert any(
        "CT statistics: the weights were trained with none (the per-volume z-score" in m
        for m in error_chain(err.value)
    )


def test_own_bundle_keeps_the_statistics_of_its_model(ct_root, tmp_path):
    """A bundle made again after the data changed still evaluates and infers with the statistics
    its model was trained with (model.json), not the ones it now embeds."""
    from monai.bundle import ConfigParser

    from pam_monai.bundle_templates.own_data import own_data_bundle

    root = Path(shutil.copytree(ct_root, tmp_path / ct_root.name))
    bundle = own_data_bundle(root, "fpa", tmp_path / "ct_fpa")
    trained = get_spec("nnunet", root=root).channel_norms
    models = bundle / "models"
    models.mkdir()
    record = {
        "task": "nnunet",
        "dataset_json": json.loads((bundle / "configs" / "train.json").read_text())["dataset_json"],
    }
    (models / "model.json").write_text(json.dumps({"metric": "val_iou", "value": 0.5, "run": record}))
    (models / "model.pt").write_bytes(b"")  # present; not loaded here
    for f in (root / "imagesTr").glob("SYN_001_*"):
        img = nib.load(str(f))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 300, img.affine), str(f))
    own_data_bundle(root, "fpa", bundle, overwrite=True)  # now embeds other statistics
    embedded = json.loads((bundle / "configs" / "train.json").read_text())["dataset_json"][PROPERTIES_KEY]
    assert embedded != record["dataset_json"][PROPERTIES_KEY]
    readme = (bundle / "docs" / "README.md").read_text()
    assert "Intensities (each channel: CT: clip to [" in readme and "a trained model's own" in readme

    def spec_of(*files):
        parser = ConfigParser()
        parser.read_config([str(bundle / "configs" / f) for f in files])
        parser.update({"bundle_root": str(bundle)})
        return parser.get_parsed_content("spec")

    assert spec_of("train.json", "evaluate.json").channel_norms == trained
    assert spec_of("inference.json").channel_norms == trained
    assert spec_of("train.json").channel_norms != trained  # training a new model: the data's own


@pytest.mark.parametrize(
    "fingerprint, message",
    [
        ("not json", "dataset_fingerprint.json: not readable JSON"),
        ({"spacings": []}, "no 'foreground_intensity_properties_per_channel' mapping channel numbers"),
        ({PROPERTIES_KEY: {"1": {}}}, r"has no entry for CT channel\(s\) \[0\]; it has \['1'\]"),
        (
            {PROPERTIES_KEY: {"0": {"mn": 1, "sd": 2}}},
            r"dataset_fingerprint.json: channel 0 \('CT'\) is CT.*found \['mn', 'sd'\]",
        ),
        (
            {PROPERTIES_KEY: {"0": {"mean": None, "std": 1, "percentile_00_5": 0, "percentile_99_5": 1}}},
            "must be numbers",
        ),
        (
            {PROPERTIES_KEY: {"0": {"mean": 0, "std": -5, "percentile_00_5": 0, "percentile_99_5": 1}}},
            "std >= 0",
        ),
    ],
)
def test_fingerprint_mistakes_are_named(ct_root, tmp_path, fingerprint, message):
    root = Path(shutil.copytree(ct_root, tmp_path / ct_root.name))
    text = fingerprint if isinstance(fingerprint, str) else json.dumps(fingerprint)
    (root / "dataset_fingerprint.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        get_spec("nnunet", root=root)


def test_ct_statistics_are_needed_only_to_normalise(ct_root, tmp_path):
    from pam_monai.data import build_datalist, check_dataset

    root = Path(shutil.copytree(ct_root, tmp_path / ct_root.name))
    for f in (root / "labelsTr").iterdir():  # every label empty: no statistics to take
        img = nib.load(str(f))
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(f))
    assert len(build_datalist("nnunet", root)["training"]) == 5  # listing cases needs none
    report = check_dataset("nnunet", root)
    assert not report.ok and any(
        "none of the 5 training cases gives foreground values (label > 0) to take CT statistics from: 0 unreadable "
        "or mis-shaped, 5 with an empty label" in str(p)
        for p in report.problems
    )


def test_monai_ct_clip_with_equal_bounds():
    """One foreground value: the clip range is a point; numpy and the MONAI chain agree."""
    norm = ChannelNorm("ct", 40.0, 40.0, 40.0, 1.0)
    image = np.array([[[-1000.0, 40.0, 100.0]]], np.float32)
    out = normalize_channels(image, [norm])
    monai = NormalizeChannelsd("image", [norm])({"image": torch.from_numpy(image)})["image"]
    np.testing.assert_array_equal(out, np.zeros_like(image))
    np.testing.assert_array_equal(np.asarray(monai), out)


def test_a_ct_foreground_of_one_intensity_is_named(ct_root, tmp_path):
    """Clipped to [v, v], every voxel of the channel normalises to 0: the checker says so."""
    from pam_monai.data import check_dataset

    root = Path(shutil.copytree(ct_root, tmp_path / ct_root.name))
    for image in sorted((root / "imagesTr").glob("*_0000.nii.gz")):
        img = nib.load(str(image))
        nib.save(nib.Nifti1Image(np.full(img.shape, 250, np.int16), img.affine), str(image))
    report = check_dataset("nnunet", root)
    assert any("the training foreground holds one intensity (250)" in w.message for w in report.warnings), (
        report.format()
    )
    assert not any("one intensity" in w.message for w in check_dataset("nnunet", ct_root).warnings)


def test_a_channel_named_ct_is_not_named_twice_in_the_bundle_words():
    """A bundle's README and metadata describe each channel's normalisation: a channel named "CT"
    read "CT: CT: clip to ..."; now "CT: clip to ...", other names keep theirs ("abdomen: CT: ...")."""
    from types import SimpleNamespace

    from pam_monai.bundle_templates.build import normalisation_words

    ct = ChannelNorm("ct", -10.0, 135.0, 47.0, 28.0)
    spec = SimpleNamespace(channels=("CT", "T2"), channel_norms=(ct, ChannelNorm("zscore")))
    assert normalisation_words(spec) == (
        "CT: clip to [-10, 135], then (x - 47) / 28 (training foreground); T2: z-score over each case's non-zero values"
    )
    spec = SimpleNamespace(channels=("abdomen", "T2"), channel_norms=spec.channel_norms)
    assert normalisation_words(spec).startswith("abdomen: CT: clip to [-10, 135]")
