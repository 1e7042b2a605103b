"""`pam_monai score --dataset nnunet` (the CLI function) scores own data and returns without error."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from pam_monai.data import synth
from pam_monai.engines.score import score


def test_score_cli_function_on_own_data(tmp_path):
    root = synth("nnunet", tmp_path / "Dataset901_Score", cases=2, slices=4)
    preds = tmp_path / "preds"
    preds.mkdir()
    for label in sorted((root / "labelsTr").glob("*.nii.gz")):
        img = nib.load(label)
        mask = (np.asanyarray(img.dataobj) > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, img.affine), preds / label.name.replace(".nii.gz", "_seg.nii.gz"))
    line = score(str(preds), dataset="nnunet", dataset_dir=str(root))
    assert line.startswith("2 cases scored")
    assert (preds / "metrics" / "metrics.csv").is_file()


def test_score_of_own_data_left_at_the_default_dataset_says_dataset_nnunet(tmp_path):
    """``score PRED --dataset_dir OWN`` without ``--dataset nnunet`` (the default is brats) said only
    "have no labelled case in OWN: another data set or split?"; it names the nnU-Net layout and the flag."""
    import pytest

    root = synth("nnunet", tmp_path / "Dataset903_Default", cases=2, slices=4)
    preds = tmp_path / "preds"
    preds.mkdir()
    for label in sorted((root / "labelsTr").glob("*.nii.gz")):
        nib.save(nib.load(label), preds / label.name.replace(".nii.gz", "_seg.nii.gz"))
    with pytest.raises(
        ValueError,
        match=r"no labelled case in .*dataset.json: this folder looks like an nnU-Net raw "
        r"data set .*--dataset nnunet",
    ):
        score(str(preds), dataset_dir=str(root))


def test_cli_error_keeps_the_file_name_of_a_broken_dataset_json(tmp_path, capsys):
    import pytest

    from pam_monai.cli import main

    root = tmp_path / "Dataset902_Broken"
    root.mkdir()
    (root / "dataset.json").write_text('{"channel_names": {"0": "T2"},}')
    with pytest.raises(SystemExit) as e:
        main(["check", "--dataset", "nnunet", "--root", str(root)])
    assert str(root / "dataset.json") in str(e.value) and "not readable JSON" in str(e.value)


def test_score_refuses_to_guess_how_to_read_label_maps(tmp_path):
    import pytest

    from pam_monai.engines.score import score_predictions

    root = synth("nnunet", tmp_path / "Dataset903_Maps", cases=2, slices=4)  # labels 1, 2, 3
    preds = tmp_path / "maps"
    preds.mkdir()
    for label in sorted((root / "labelsTr").glob("*.nii.gz")):  # nnU-Net's output: label maps
        img = nib.load(label)
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj).astype(np.uint8), img.affine), preds / label.name)
    with pytest.raises(
        ValueError,
        match=r"values 1, 2, 3, where a binary mask holds one \(1 or 255\) and the target is \[3\].*--label_map true",
    ):
        score_predictions(preds, "nnunet", root, tmp_path / "out", foreground_label="enhancing")
    summary = score_predictions(
        preds, "nnunet", root, tmp_path / "o2", foreground_label="enhancing", label_map=True
    )
    assert summary["iou"]["mean"] == 1.0
    everything = score_predictions(
        preds, "nnunet", root, tmp_path / "o4", foreground_label="enhancing", label_map=False
    )
    assert everything["iou"]["mean"] < 1.0  # every label counted, as asked
    # every label is the target: non-zero is the target either way, nothing to ask
    assert score_predictions(preds, "nnunet", root, tmp_path / "o3")["iou"]["mean"] == 1.0


def test_score_refuses_a_label_map_whose_only_other_label_is_1(tmp_path):
    """A label map holding label 1 beside the target 3 (no 2 predicted in it) is no binary mask:
    reading it as one counts label 1 as the target."""
    import pytest

    from pam_monai.engines.score import score_predictions

    root = synth("nnunet", tmp_path / "Dataset904_Maps", cases=2, slices=4)  # labels 1, 2, 3
    preds = tmp_path / "maps"
    preds.mkdir()
    for label in sorted((root / "labelsTr").glob("*.nii.gz")):
        img = nib.load(label)
        data = np.asanyarray(img.dataobj).astype(np.uint8)
        data[data == 2] = 1  # values 0, 1, 3
        nib.save(nib.Nifti1Image(data, img.affine), preds / label.name)
    with pytest.raises(ValueError, match=r"values 1, 3, where a binary mask holds one.*--label_map true"):
        score_predictions(preds, "nnunet", root, tmp_path / "out", foreground_label="enhancing")
    summary = score_predictions(
        preds, "nnunet", root, tmp_path / "o2", foreground_label="enhancing", label_map=True
    )
    assert summary["iou"]["mean"] == 1.0


def test_score_gives_hd95_in_the_labels_physical_units(tmp_path):
    """Own data on a 1.2 x 1.2 x 3 mm grid: HD95 in mm, as the evaluation scores it (the BRATS tests'
    1 mm grid cannot tell millimetres from voxels)."""
    import csv

    import pytest

    from pam_monai.engines.score import score_predictions
    from pam_monai.metrics import case_metrics

    root = synth("nnunet", tmp_path / "Dataset905_Spacing", cases=2, slices=4)
    preds = tmp_path / "preds"
    preds.mkdir()
    for label in sorted((root / "labelsTr").glob("*.nii.gz")):
        img = nib.load(label)
        mask = np.roll(np.asanyarray(img.dataobj) > 0, (2, 1), axis=(0, 2)).astype(
            np.uint8
        )  # off by 2 x 1 voxels
        nib.save(nib.Nifti1Image(mask, img.affine), preds / label.name.replace(".nii.gz", "_seg.nii.gz"))
    score_predictions(preds, "nnunet", root, tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "metrics.csv", newline="")))
    assert len(rows) == 2
    for row in rows:
        img = nib.load(root / "labelsTr" / f"{row['case']}.nii.gz")
        spacing = tuple(float(s) for s in np.sqrt((img.affine[:3, :3] ** 2).sum(0)))
        assert spacing[2] != spacing[0]
        pred = np.asanyarray(nib.load(preds / f"{row['case']}_seg.nii.gz").dataobj) > 0
        expected = case_metrics(pred, np.asanyarray(img.dataobj) > 0, spacing=spacing)["hd95"]
        assert float(row["hd95"]) == pytest.approx(expected, rel=1e-5)
        assert expected != pytest.approx(case_metrics(pred, np.asanyarray(img.dataobj) > 0)["hd95"], rel=1e-3)


def test_cli_root_cause_looks_past_monai_wrappers():
    """MONAI's "Failed to evaluate ConfigExpression" quotes the expression, which may contain a
    short cause by chance (KeyError('train') in "@data['train']"): the cause is still shown."""
    from pam_monai.cli import _root_cause

    try:
        try:
            raise KeyError("train")
        except KeyError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: $@data['train']") from e
    except RuntimeError as wrapped:
        assert isinstance(_root_cause(wrapped), KeyError)
    try:  # an error that names the file of its cause is kept (dataset.json's JSON error)
        try:
            raise ValueError("Expecting value: line 1 column 2")
        except ValueError as e:
            raise ValueError("x/dataset.json: not readable JSON (Expecting value: line 1 column 2)") from e
    except ValueError as named:
        assert "dataset.json" in str(_root_cause(named))
    try:  # a cause without a message: the error naming the file is shown, not a bare "EOFError: "
        try:
            raise EOFError
        except EOFError as e:
            raise RuntimeError("x/model.pt: cannot load checkpoint (EOFError: )") from e
    except RuntimeError as named:
        try:
            raise RuntimeError("Failed to evaluate ConfigExpression: $@predictor.run()") from named
        except RuntimeError as wrapped:
            assert "model.pt" in str(_root_cause(wrapped))
