"""Sparse annotations: nnU-Net's ``ignore`` label (unannotated voxels) is left out of the binary
target's foreground, the training slices, the loss and every metric."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, SMALL_RUN, error_chain

from pam_monai.data import SliceDataset, build_datalist, check_dataset, get_spec, get_split, synth
from pam_monai.data.ops import IGNORE, binarize
from pam_monai.data.preprocess import preprocess_case
from pam_monai.data.transforms import get_preprocess_transforms
from pam_monai.metrics import case_metrics, split_ignored
from pam_monai.metrics.paper_protocol import paper_protocol_metrics

IGNORE_VALUE = 4  # the synthetic set's labels are 0..3


def train_items(root: Path) -> list[dict]:
    return get_split("nnunet", build_datalist("nnunet", root), "train", fold=0, root=root)


def unannotated(shape) -> np.ndarray:
    """What ``synth(..., sparse=True)`` leaves unannotated: every odd slice and 20 rows of the others."""
    mask = np.zeros(shape, bool)
    mask[..., 1::2] = True
    mask[:20] = True
    return mask


@pytest.fixture(scope="module")
def sparse_root(tmp_path_factory) -> Path:
    return synth(
        "nnunet", tmp_path_factory.mktemp("sparse") / "Dataset901_Sparse", cases=6, slices=8, sparse=True
    )


def test_ignore_label_in_the_spec(sparse_root):
    spec = get_spec("nnunet", root=sparse_root)
    assert spec.ignore_label == IGNORE_VALUE
    assert spec.foreground_labels == (1, 2, 3) and IGNORE_VALUE in spec.label_values
    assert spec.target == "necrosis, oedema, enhancing"
    with pytest.raises(ValueError, match="label 4 is the 'ignore' label"):
        spec.resolve_labels("ignore")
    assert binarize(np.array([0, 1, 3, 4]), (1, 3), IGNORE_VALUE).tolist() == [0, 1, 1, IGNORE]


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"background": 0, "lesion": 1, "ignore": [2, 3]}, "'ignore' must be one value"),
        ({"background": 0, "ignore": 1, "lesion": 2}, "the highest label value"),
        ({"background": 0, "lesion": 1, "ignore": 2, "all": [1, 2]}, "in no other label or region"),
        ({"background": 0, "lesion": 1, "ignore": 0}, "it is 0, the background"),
        (
            {"background": 0, "lesion": 1, "Ignore": 2},
            "label 'Ignore': unannotated voxels are the label named exactly",
        ),
    ],
)
def test_ignore_label_mistakes_are_named(sparse_root, tmp_path, labels, message):
    meta = json.loads((sparse_root / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": labels}))
    with pytest.raises(ValueError, match=message) as err:
        get_spec("nnunet", root=tmp_path, crop_size=[96, 96])
    assert str(tmp_path / "dataset.json") in str(err.value)


def test_binary_target_numpy_and_monai_chain_mark_unannotated_voxels(sparse_root):
    spec = get_spec("nnunet", root=sparse_root)
    item = train_items(sparse_root)[0]
    ours = preprocess_case(spec, item)["label"]
    theirs = get_preprocess_transforms(spec)(dict(item))["label"]
    np.testing.assert_array_equal(ours, np.asarray(theirs))
    raw = np.asarray(nib.load(item["label"]).dataobj)
    crop = np.ones((1, 96, 96, 8), bool)  # the padding is not annotated either
    crop[0, 3:93, 6:90] = unannotated(raw.shape)  # the 90 x 84 image centred in the 96 x 96 crop
    assert set(np.unique(ours)) == {0, 1, IGNORE}
    np.testing.assert_array_equal(ours == IGNORE, crop)


def test_training_slices_leave_out_unannotated_ones(sparse_root):
    items = train_items(sparse_root)
    ds = SliceDataset(
        items, get_spec("nnunet", root=sparse_root), keep_background_fraction=1.0, progress=False
    )
    summary = ds.summary()
    assert summary["unannotated_slices"] == 4 * len(items)  # the odd slices of each case
    assert len(ds) == summary["slices"] - summary["unannotated_slices"]
    served = {ds.slice_info(i)[1] for i in range(len(ds))}
    assert served == {0, 2, 4, 6}
    for i in range(len(ds)):
        label = ds[i]["label"]
        assert (label != IGNORE).any() and set(torch.unique(label).tolist()) <= {0.0, 1.0, float(IGNORE)}
    # foreground counts are the annotated foreground's, not the IGNORE values'
    case = ds.cases.index(Path(items[0]["label"]).name.split(".")[0])
    raw = np.asarray(nib.load(items[0]["label"]).dataobj)
    expected = np.isin(raw, (1, 2, 3)).sum(axis=(0, 1))
    np.testing.assert_array_equal(ds.foreground_per_slice[case], expected)


@pytest.mark.parametrize("network", ["unet", "rfna"])
def test_loss_is_masked_dice_over_annotated_voxels(network):
    from monai.losses import DiceLoss, MaskedDiceLoss

    from pam_monai.networks import get_network, loss_for

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 16, 16, generator=g, requires_grad=True)
    target = (torch.rand(4, 1, 16, 16, generator=g) > 0.6).float()
    ignored = torch.rand(4, 1, 16, 16, generator=g) > 0.7
    net = get_network(network, spatial_dims=2, in_channels=1, out_channels=1, features=(4, 8, 16, 32))
    dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    loss = loss_for(net, dice, ignore=True)(logits, target.masked_fill(ignored, IGNORE))
    # the paper's RFNA loss is Dice on the reversed probabilities and labels
    sign, want = (-1.0, 1.0 - target) if network == "rfna" else (1.0, target)
    masked = MaskedDiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    reference = masked(sign * logits, want.masked_fill(ignored, 0.0), (~ignored).float())
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert logits.grad[ignored].abs().max() == 0 and logits.grad[~ignored].abs().max() > 0
    # whatever the network says on unannotated voxels does not change the loss
    other = logits.detach().masked_fill(ignored, 30.0)
    torch.testing.assert_close(
        loss_for(net, dice, ignore=True)(other, target.masked_fill(ignored, IGNORE)), loss
    )


def test_background_slices_are_drawn_among_annotated_ones(sparse_root):
    """The paper's half of the background slices (``keep_background_fraction=0.5``, the bundles')
    is drawn among the annotated slices: an unannotated one holds nothing to learn and would only
    take a drawn slice's place (test_training_slices_leave_out_unannotated_ones keeps every slice,
    which skips the draw)."""
    items = train_items(sparse_root)
    spec = get_spec("nnunet", root=sparse_root)
    for seed in range(3):
        ds = SliceDataset(items, spec, keep_background_fraction=0.5, seed=seed, progress=False)
        assert {ds.slice_info(i)[1] for i in range(len(ds))} <= {0, 2, 4, 6}


def test_metrics_count_annotated_voxels_only():
    rng = np.random.default_rng(0)
    pred = rng.random((12, 10, 4)) > 0.5
    truth = rng.random((12, 10, 4)) > 0.6
    annotated = rng.random((12, 10, 4)) > 0.3
    annotated[..., 3] = False  # one slice without annotation
    target = np.where(annotated, truth, IGNORE).astype(np.uint8)
    t, valid = split_ignored(target)
    np.testing.assert_array_equal(valid, annotated)
    row = case_metrics(pred, t, annotated=valid)
    p, y = pred[annotated], truth[annotated]  # the annotated voxels as a flat list, by hand
    tp, fp, fn, tn = (p & y).sum(), (p & ~y).sum(), (~p & y).sum(), (~p & ~y).sum()
    assert row["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert row["fp_rate"] == pytest.approx(fp / (fp + tn))
    assert row["fn_rate"] == pytest.approx(fn / (tp + fn))
    # a prediction anywhere on unannotated voxels changes nothing
    assert case_metrics(pred | ~annotated, t, annotated=valid) == row
    assert case_metrics(pred, t)["fp_rate"] != row["fp_rate"]  # (without the mask it would)
    per_slice = paper_protocol_metrics(pred, t, annotated=valid)
    assert per_slice["count"] == 3  # the unannotated slice is not scored
    slices = [case_metrics(pred[..., k], t[..., k], annotated=valid[..., k])["iou"] for k in range(3)]
    assert per_slice["iou"]["median"] == pytest.approx(np.median(slices))
    assert per_slice["iou"]["mean"] == pytest.approx(np.mean(slices))
    assert split_ignored(truth.astype(np.uint8))[1] is None  # every voxel annotated: no mask


def test_checker_names_a_case_without_annotation(sparse_root, tmp_path):
    root = Path(shutil.copytree(sparse_root, tmp_path / sparse_root.name))
    f = root / "labelsTr" / "SYN_002.nii.gz"
    img = nib.load(str(f))
    nib.save(nib.Nifti1Image(np.full(img.shape, IGNORE_VALUE, np.uint8), img.affine), str(f))
    report = check_dataset("nnunet", root)
    assert [(w.case, w.message) for w in report.warnings] == [
        ("SYN_002", "no annotated voxel (all 'ignore', 4): not trained on, not scored")
    ]
    assert "unannotated" in report.format()


def test_bundle_trains_and_scores_sparse_annotations(sparse_root, tmp_path):
    """Training runs on the annotated voxels, and the evaluator's per-case metrics are exactly
    those of the inference masks over the annotated voxels (computed here by hand)."""
    from monai.bundle import run

    configs = ROOT / "bundles" / "isles_fpa" / "configs"
    common = {
        "bundle_root": str(tmp_path / "run"),
        "dataset_dir": str(sparse_root),
        "task": "nnunet",
        **SMALL_RUN,
    }
    run("training", config_file=str(configs / "train.json"), logging_file=False, **common)
    record = json.loads((tmp_path / "run" / "models" / "model.json").read_text())["run"]
    assert record["dataset_json"]["labels"]["ignore"] == IGNORE_VALUE
    files = [str(configs / "train.json"), str(configs / "evaluate.json")]
    run("evaluating", config_file=files, logging_file=False, **common)
    lines = (tmp_path / "run" / "eval" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = {r.split(",")[0]: dict(zip(header, r.split(","))) for r in lines[1:]}
    assert rows

    folder = tmp_path / "test_images"
    folder.mkdir()
    for case in rows:
        for f in (sparse_root / "imagesTr").glob(f"{case}_*"):
            shutil.copy(f, folder / f.name)
    out = tmp_path / "predictions"
    run(
        "inferring",
        config_file=str(configs / "inference.json"),
        logging_file=False,
        bundle_root=str(tmp_path / "run"),
        task="nnunet",
        dataset_dir=str(sparse_root),
        input_dir=str(folder),
        output_dir=str(out),
        network_options=SMALL_RUN["network_options"],
    )
    differs = False
    for case, row in rows.items():
        pred = np.asarray(nib.load(str(out / f"{case}_seg.nii.gz")).dataobj) > 0
        raw = np.asarray(nib.load(str(sparse_root / "labelsTr" / f"{case}.nii.gz")).dataobj)
        valid = raw != IGNORE_VALUE
        p, y = pred[valid], np.isin(raw, (1, 2, 3))[valid]
        tp, fp, fn, tn = (p & y).sum(), (p & ~y).sum(), (~p & y).sum(), (~p & ~y).sum()
        assert float(row["iou"]) == pytest.approx(tp / (tp + fp + fn), rel=1e-5)
        assert float(row["fp_rate"]) == pytest.approx(fp / (fp + tn), rel=1e-5)
        # counting the unannotated voxels as background would have given other figures
        everywhere = case_metrics(pred, np.isin(raw, (1, 2, 3)))
        differs |= abs(everywhere["fp_rate"] - float(row["fp_rate"])) > 1e-3
    assert differs
    # the inference masks scored by `pam_monai score` give the evaluator's table
    from pam_monai.engines.score import score_predictions

    score_predictions(out, "nnunet", sparse_root, tmp_path / "scored")
    scored = (tmp_path / "scored" / "metrics.csv").read_text().splitlines()
    assert scored[0] == lines[0]
    for line in scored[1:]:
        mine = dict(zip(header, line.split(",")))
        for metric in ("iou", "dice", "hd95", "fp_rate", "fn_rate"):
            assert float(mine[metric]) == pytest.approx(float(rows[mine["case"]][metric]), rel=1e-5, abs=1e-9)


def test_a_loss_that_would_learn_unannotated_voxels_is_refused_before_training(sparse_root, tmp_path):
    """A config whose loss was rewritten without ``loss_for(..., ignore=True)`` would train on the
    IGNORE targets (value 2) as foreground: the trainer refuses before the first step."""
    from monai.bundle import run

    configs = ROOT / "bundles" / "isles_fpa" / "configs"
    with pytest.raises(Exception) as err:  # MONAI wraps it in the failed expression's RuntimeError
        run(
            "training",
            config_file=str(configs / "train.json"),
            logging_file=False,
            bundle_root=str(tmp_path / "run"),
            dataset_dir=str(sparse_root),
            task="nnunet",
            loss="$monai.losses.DiceLoss(sigmoid=True, batch=True)",
            **SMALL_RUN,
        )
    chain = error_chain(err.value)
    assert any(
        "unannotated voxels (dataset.json label 'ignore': 4), but the training loss DiceLoss" in m
        for m in chain
    ), chain
    assert not (tmp_path / "run" / "models" / "checkpoint_last.pt").exists()


def test_monai_metric_scores_annotated_voxels():
    from pam_monai.metrics import MaskMetric

    pred = torch.tensor([[[[1.0, 1.0, 0.0, 1.0]]], [[[1.0, 0.0, 0.0, 0.0]]]])
    ref = torch.tensor([[[[1.0, IGNORE, 1.0, 0.0]]], [[[IGNORE] * 4]]])
    metric = MaskMetric("iou", reduction="none", ignore=True)
    values = metric(pred, ref)
    assert values[0, 0].item() == pytest.approx(1 / 3) and torch.isnan(values[1, 0])
    assert MaskMetric("iou", ignore=True)(pred[:1], ref[:1]).item() == pytest.approx(1 / 3)
    # without ignore=True a label map's value 2 is foreground, as for the functions (pam_monai.metrics.iou)
    from pam_monai.metrics import IoUMetric, iou
    from pam_monai.metrics.handlers import IoUHandler

    labels = torch.tensor([[[[0.0, 2.0, 2.0, 0.0]]]])
    ones = torch.tensor([[[[1.0, 1.0, 1.0, 0.0]]]])
    assert IoUMetric()(ones, labels).item() == pytest.approx(iou(ones, labels)) == pytest.approx(2 / 3)
    assert IoUMetric(ignore=True)(ones, labels).item() == 0.0  # (all unannotated but one background voxel)
    assert IoUHandler(ignore=True).metric_fn.ignore and not IoUHandler().metric_fn.ignore


def test_case_metrics_without_any_annotated_case_says_so():
    """A validation / test split whose cases are all unannotated has nothing to score: a named
    error, not a KeyError in the checkpoint saver (validation) or a run without metrics.csv (evaluation)."""
    from ignite.engine import Engine

    from pam_monai.engines import CaseMetrics

    label = torch.full((1, 8, 8), float(IGNORE))
    batch = [{"case": "SYN_009", "spacing": torch.ones(2)}]
    engine = Engine(lambda e, b: [{"pred": torch.ones(1, 8, 8), "label": label}])
    CaseMetrics(prefix="val_").attach(engine)
    with pytest.raises(ValueError, match=r"val: none of its 1 case\(s\) \(SYN_009\) has an annotated voxel"):
        engine.run([batch], max_epochs=1)


def test_authors_code_metrics_leave_unannotated_slices_and_voxels_out():
    """The paper protocol's (b) columns: an unannotated slice is no slice without tumour (FN rate
    1.0, IoU 0.5 there), and an unannotated voxel is no true negative."""
    from pam_monai.metrics.paper_protocol import authors_code_metrics

    rng = np.random.default_rng(1)
    pred = rng.random((12, 10, 4)) > 0.5
    truth = rng.random((12, 10, 4)) > 0.6
    annotated = rng.random((12, 10, 4)) > 0.3
    annotated[..., 3] = False
    t, valid = split_ignored(np.where(annotated, truth, IGNORE).astype(np.uint8))
    row = authors_code_metrics(pred, t, annotated=valid)
    assert row["slices"] == 3
    fp, fn, iou = [], [], []
    for k in range(3):
        p, y = pred[..., k][annotated[..., k]], truth[..., k][annotated[..., k]]
        tp, f_p, f_n, tn = (p & y).sum(), (p & ~y).sum(), (~p & y).sum(), (~p & ~y).sum()
        fp.append(f_p / (f_p + tn))
        fn.append(f_n / (tp + f_n))
        iou.append((2 * tp / (2 * tp + f_p + f_n) + 2 * tn / (2 * tn + f_p + f_n)) / 2)
    assert row["authors_code_fp_rate"] == pytest.approx(np.mean(fp))
    assert row["authors_code_fn_rate"] == pytest.approx(np.mean(fn))
    assert row["authors_code_iou"] == pytest.approx(np.mean(iou))
    # a prediction anywhere on unannotated voxels changes nothing
    assert authors_code_metrics(pred | ~annotated, t, annotated=valid) == row
    assert authors_code_metrics(pred, truth) == authors_code_metrics(
        pred, truth, annotated=np.ones_like(truth)
    )


def test_overlay_colours_annotated_pixels_only():
    """Figure 5 on sparse annotations: a prediction on unannotated pixels is no false positive
    (it is not coloured), as the metrics count it."""
    from pam_monai.experiments.figures import FP_COLOUR, TP_COLOUR, overlay

    grey = np.full((2, 3), 0.5)
    pred = np.array([[1, 1, 0], [1, 0, 0]], bool)
    target = np.array([[1, 0, 0], [0, 0, 0]], bool)
    annotated = np.array([[1, 1, 1], [0, 0, 0]], bool)
    out = overlay(grey, pred, target, alpha=1.0, annotated=annotated)
    np.testing.assert_allclose(out[0, 0], TP_COLOUR)
    np.testing.assert_allclose(out[0, 1], FP_COLOUR)
    np.testing.assert_allclose(out[1, 0], [0.5, 0.5, 0.5])  # predicted, but unannotated
    np.testing.assert_allclose(overlay(grey, pred, target, alpha=1.0)[1, 0], FP_COLOUR)


def test_own_data_bundle_embeds_and_documents_the_ignore_label(sparse_root, tmp_path):
    from pam_monai.bundle_templates.own_data import own_data_bundle

    out = own_data_bundle(sparse_root, "rfna", tmp_path / "sparse_rfna")
    for name in ("train.json", "inference.json"):
        config = json.loads((out / "configs" / name).read_text())
        assert config["dataset_json"]["labels"]["ignore"] == IGNORE_VALUE
    readme = (out / "docs" / "README.md").read_text()
    assert f"Sparse annotations: label {IGNORE_VALUE} (`ignore`) marks unannotated voxels" in readme
    assert "annotated voxels only (a test case without any is not scored).\n\n## Training" in readme


def test_ct_statistics_come_from_annotated_foreground(tmp_path):
    from pam_monai.data.nnunet import intensity_properties

    root = synth("nnunet", tmp_path / "Dataset903_SparseCT", cases=3, slices=4, ct=True, sparse=True)
    values = []
    for f in sorted((root / "labelsTr").glob("*.nii.gz")):
        label = np.asarray(nib.load(str(f)).dataobj)
        image = np.asarray(nib.load(str(root / "imagesTr" / f"{f.name[:-7]}_0000.nii.gz")).get_fdata())
        values.append(image[(label > 0) & (label != IGNORE_VALUE)])
    v = np.concatenate(values)  # fewer than 100,000 voxels per case: every one is sampled
    stats = intensity_properties(root)["0"]
    assert stats["mean"] == pytest.approx(v.mean()) and stats["percentile_00_5"] == pytest.approx(
        np.percentile(v, 0.5)
    )
    assert stats["mean"] > 0  # soft tissue and lesion, not the air (-1000 HU) that 'ignore' also covers


def test_paper_protocol_rows_skip_a_case_annotated_only_outside_the_crop(monkeypatch, caplog):
    """The case grid's metrics.csv scores such a case (a missed lesion); the per-slice protocol of
    the network's crop has no annotated slice: it crashed on summarising no slice, with a message
    about rows without 'target_empty'."""
    import logging
    from types import SimpleNamespace

    from pam_monai.experiments import predict

    full = np.full((1, 12, 12, 4), IGNORE, np.uint8)
    full[0, 0:2, 0:4, 1] = 0
    full[0, 0:2, 0:2, 1] = 1  # annotated, a lesion among them, in a corner outside the 8 x 8 crop
    crop = full[:, 2:10, 2:10].copy()
    assert (crop == IGNORE).all()
    annotated = {"case": "corner", "label": torch.from_numpy(crop), "label_full": torch.from_numpy(full)}
    other = {"case": "centre", "label": torch.zeros(1, 8, 8, 4, dtype=torch.uint8)}
    other["label"][0, 3:5, 3:5, 2] = 1
    samples = [{"image": torch.zeros(1, 8, 8, 4), "spacing": torch.ones(3), **s} for s in (annotated, other)]
    dataset = type("Cases", (list,), {"spec": SimpleNamespace(crop_size=(8, 8))})(samples)
    monkeypatch.setattr(predict, "predict_case", lambda *args, **kwargs: np.zeros((8, 8, 4), bool))
    assert predict.score_on_case_grid(np.zeros((8, 8, 4), bool), samples[0])["fn_rate"] == 1.0
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        rows = predict.paper_protocol_rows(None, dataset)
    assert [r["case"] for r in rows] == ["centre"] and rows[0]["fn_rate"] == pytest.approx(0.25)
    assert "corner: no annotated voxel in the network's crop" in caplog.text
