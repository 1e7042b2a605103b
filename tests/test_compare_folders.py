"""`python -m pam_monai compare`: evaluated folders (metrics.csv of score or a bundle's evaluation)
compared case by case (pam_monai.experiments.compare_folders)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import wilcoxon

from pam_monai.data import synth
from pam_monai.engines.score import score_predictions
from pam_monai.experiments.compare_folders import compare, compare_folders, default_names, load_evaluation

CASES = 8


def _masks(root: Path, folder: Path, flip: float, seed: int, empty: tuple[str, ...] = ()) -> Path:
    """Each label's foreground with a share ``flip`` of its voxels flipped; cases in ``empty`` get an empty mask."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for label in sorted((root / "labelsTr").glob("*.nii.gz")):
        img = nib.load(label)
        mask = np.asanyarray(img.dataobj) > 0
        mask ^= rng.random(mask.shape) < flip
        case = label.name[: -len(".nii.gz")]
        if case in empty:
            mask[:] = False
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), img.affine), folder / f"{case}_seg.nii.gz")
    return folder


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Three models' masks of one synthetic own data set, scored by ``score`` (its metrics.csv and
    summary.json are written by the bundles' evaluation's writer): ``<model>/metrics``."""
    base = tmp_path_factory.mktemp("compare")
    root = synth("nnunet", base / "Dataset910_Compare", cases=CASES, slices=4)
    out = {"root": root}
    for name, flip, seed in (("unet", 0.02, 0), ("fpa", 0.01, 1), ("rfna", 0.015, 2)):
        masks = _masks(root, base / name, flip, seed)
        score_predictions(masks, "nnunet", root, masks / "metrics")
        out[name] = masks
    return out


def _column(folder: Path, metric: str) -> dict[str, float]:
    with open(folder / "metrics" / "metrics.csv", newline="") as f:
        return {r["case"]: float(r[metric]) for r in csv.DictReader(f)}


def test_figures_match_an_independent_computation(scored, tmp_path):
    """Mean difference, better / equal / worse, Wilcoxon p from scipy on the differences read from
    the files, and Holm over the two folders compared with the reference, by hand."""
    rows, *_ = compare_folders([scored["unet"], scored["fpa"], scored["rfna"]], metrics=["iou", "hd95"])
    assert [(r["metric"], r["network"], r["reference"]) for r in rows] == [
        ("iou", "fpa", "unet"),
        ("iou", "rfna", "unet"),
        ("hd95", "fpa", "unet"),
        ("hd95", "rfna", "unet"),
    ]
    for metric, sign in (("iou", 1), ("hd95", -1)):
        ref = _column(scored["unet"], metric)
        p = {}
        for name in ("fpa", "rfna"):
            mine = _column(scored[name], metric)
            d = np.array([mine[c] - ref[c] for c in sorted(ref)])
            (row,) = [r for r in rows if r["metric"] == metric and r["network"] == name]
            assert row["cases"] == CASES
            assert row["mean_difference"] == pytest.approx(d.mean(), abs=1e-9)
            assert (row["better"], row["equal"], row["worse"]) == (
                int(np.sum(sign * d > 0)),
                int(np.sum(d == 0)),
                int(np.sum(sign * d < 0)),
            )
            nonzero = d[d != 0]
            p[name] = float(wilcoxon(nonzero).pvalue) if nonzero.size else 1.0
            assert row["wilcoxon_p"] == pytest.approx(p[name])
            if d.std() > 0:
                assert row["ci_low"] <= row["mean_difference"] <= row["ci_high"]
        low, high = sorted(p.values())
        holm = {
            n: min(1.0, 2 * low) if v == low else max(min(1.0, 2 * low), min(1.0, high)) for n, v in p.items()
        }
        for name in ("fpa", "rfna"):
            (row,) = [r for r in rows if r["metric"] == metric and r["network"] == name]
            assert row["holm_p"] == pytest.approx(holm[name])


def test_outputs_are_written_whole_and_deterministic(scored, tmp_path, capsys):
    from pam_monai.cli import main

    out = tmp_path / "cmp"
    main(["compare", str(scored["unet"]), str(scored["fpa"]), "--output", str(out)])
    printed = capsys.readouterr().out
    assert "| reference | network | metric |" in printed and "| unet | fpa | IoU (%) | 8 |" in printed
    assert sorted(os.listdir(out)) == ["compare.csv", "compare.md"]  # no temporary file left
    first = (out / "compare.csv").read_bytes()
    table = list(csv.DictReader(open(out / "compare.csv", newline="")))
    assert [r["metric"] for r in table] == ["iou", "dice", "hd95", "fp_rate", "fn_rate"]
    assert table[0]["network"] == "fpa" and table[0]["reference"] == "unet" and table[0]["cases"] == "8"
    md = (out / "compare.md").read_text()
    assert str(scored["fpa"] / "metrics" / "metrics.csv") in md and "| unet | fpa | IoU (%) | 8 |" in md
    main(["compare", str(scored["unet"]), str(scored["fpa"]), "--output", str(out)])
    assert (out / "compare.csv").read_bytes() == first  # the seeded bootstrap: the same figures


def test_a_refused_comparison_leaves_the_previous_outputs_alone(scored, tmp_path):
    out = tmp_path / "cmp"
    compare(str(scored["unet"]), str(scored["fpa"]), output=str(out))
    before = {f: (out / f).read_bytes() for f in ("compare.csv", "compare.md")}
    with pytest.raises(ValueError, match="same evaluated folder given twice"):
        compare(str(scored["unet"]), str(scored["unet"] / "metrics"), output=str(out))
    assert {f: (out / f).read_bytes() for f in before} == before


def test_an_output_that_cannot_be_written_is_refused_before_the_work(scored, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"not writable.*--output DIR"):
        compare(str(scored["unet"]), str(tmp_path / "nowhere"), output=str(blocker / "cmp"))


def test_a_folder_without_metrics_csv_is_named_with_how_to_make_it(scored, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        compare_folders([scored["unet"], scored["root"]])
    message = str(e.value)
    assert f"{scored['root']}: no metrics.csv" in message
    assert "python -m pam_monai score --predictions" in message and "monai.bundle run evaluating" in message


def test_the_bundle_folder_or_its_eval_folder_and_the_names(scored, tmp_path):
    """A bundle's evaluation writes <bundle>/eval/metrics.csv: the folder is named after the bundle,
    with as many parent folders as it takes to tell two such bundles apart."""
    for run in ("run1", "run2"):
        shutil.copytree(
            scored["unet" if run == "run1" else "fpa"] / "metrics", tmp_path / run / "brats_fpa" / "eval"
        )
    first, second = (
        load_evaluation(tmp_path / "run1" / "brats_fpa"),
        load_evaluation(tmp_path / "run2/brats_fpa/eval"),
    )
    assert first.csv_path == tmp_path / "run1" / "brats_fpa" / "eval" / "metrics.csv"
    assert default_names([first, second]) == ["run1/brats_fpa", "run2/brats_fpa"]
    assert default_names([load_evaluation(scored["unet"]), load_evaluation(scored["fpa"] / "metrics")]) == [
        "unet",
        "fpa",
    ]
    rows, *_ = compare_folders([scored["unet"], scored["fpa"]], names="base,mine", metrics=["iou"])
    assert (rows[0]["reference"], rows[0]["network"]) == ("base", "mine")
    rows, *_ = compare_folders([scored["unet"], scored["fpa"]], names=("base", "mine"), reference="mine")
    assert (rows[0]["reference"], rows[0]["network"]) == ("mine", "base")
    rows, *_ = compare_folders([scored["unet"], scored["fpa"]], reference=str(scored["fpa"]))
    assert rows[0]["reference"] == "fpa"
    with pytest.raises(ValueError, match="--names a: give 2 different names"):
        compare_folders([scored["unet"], scored["fpa"]], names="a")
    with pytest.raises(ValueError, match=r"--reference nope: neither a folder's name \(unet, fpa\)"):
        compare_folders([scored["unet"], scored["fpa"]], reference="nope")


def _drop_case(folder: Path, case: str, dest: Path, root: Path) -> Path:
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("metrics"))
    (dest / f"{case}_seg.nii.gz").unlink()
    score_predictions(dest, "nnunet", root, dest / "metrics")
    return dest


def test_different_case_sets_are_refused_unless_common_cases(scored, tmp_path):
    fewer = _drop_case(scored["fpa"], "SYN_003", tmp_path / "fewer", scored["root"])
    with pytest.raises(ValueError) as e:
        compare_folders([scored["unet"], fewer])
    message = str(e.value)
    assert f"{fewer} (fewer): 7 cases, lacks 1 (SYN_003)" in message and "--common_cases" in message
    assert f"{scored['unet']} (unet)" not in message  # the reference lacks none
    rows, _, _, cases, notes = compare_folders([scored["unet"], fewer], common_cases=True, metrics=["iou"])
    assert rows[0]["cases"] == 7 and "SYN_003" not in cases
    assert notes == ["unet: 1 of its 8 cases left out (SYN_003)"]
    ref, mine = _column(scored["unet"], "iou"), _column(fewer, "iou")
    d = np.array([mine[c] - ref[c] for c in sorted(mine)])
    assert rows[0]["mean_difference"] == pytest.approx(d.mean(), abs=1e-9)
    assert "unet: 1 of its 8 cases left out (SYN_003)" in compare(
        str(scored["unet"]), str(fewer), common_cases=True, output=str(tmp_path / "cmp")
    )
    with pytest.raises(
        ValueError, match="do not hold the same cases"
    ):  # Fire gives --common_cases false as text
        compare(str(scored["unet"]), str(fewer), common_cases="false", output=str(tmp_path / "cmp"))


def _without_settings(folder: Path, dest: Path) -> Path:
    """A copy of a score folder as a bundle's evaluation writes it: summary.json without ``scored_with``."""
    shutil.copytree(folder, dest)
    summary = json.loads((dest / "summary.json").read_text())
    del summary["scored_with"]
    (dest / "summary.json").write_text(json.dumps(summary))
    return dest


def test_folders_scored_with_different_empty_values_are_refused(scored, tmp_path):
    """A case with an empty mask gets HD95 = --empty_value (default the image diagonal): the same
    masks scored with two empty values differ there, not because of the models. score records the
    value in summary.json; without it (a bundle's evaluation) the HD95 of such a case tells."""
    masks = _masks(scored["root"], tmp_path / "masks", 0.01, 3, empty=("SYN_002",))
    score_predictions(masks, "nnunet", scored["root"], tmp_path / "default")
    score_predictions(masks, "nnunet", scored["root"], tmp_path / "hundred", empty_value=100.0)
    with pytest.raises(
        ValueError, match=r"were scored with different --empty_value: 100.0 and None \(summary"
    ):
        compare_folders([tmp_path / "default", tmp_path / "hundred"])
    plain = [_without_settings(tmp_path / f, tmp_path / f"{f}_eval" / "eval") for f in ("default", "hundred")]
    with pytest.raises(
        ValueError, match=r"different HD95 values to a case with exactly one empty mask \(case SYN_002"
    ):
        compare_folders(plain)
    other = _masks(scored["root"], tmp_path / "other", 0.02, 4, empty=("SYN_002",))
    score_predictions(other, "nnunet", scored["root"], other / "metrics")
    rows, *_ = compare_folders([tmp_path / "default", other], metrics=["hd95"])  # same rule: compared
    assert rows[0]["cases"] == CASES
    rows, *_ = compare_folders([plain[0], other], metrics=["hd95"])  # one records no settings: the rows tell
    assert rows[0]["cases"] == CASES


def test_folders_scored_for_another_foreground_label_are_refused(scored, tmp_path):
    score_predictions(
        scored["fpa"], "nnunet", scored["root"], tmp_path / "enhancing", foreground_label="enhancing"
    )
    with pytest.raises(ValueError) as e:
        compare_folders([scored["unet"], tmp_path / "enhancing"])
    assert (
        f"{tmp_path / 'enhancing'} (enhancing) and {scored['unet']} (unet) were scored with different "
        in str(e.value)
    )
    assert "--foreground_label: [3] and [1, 2, 3]" in str(e.value)


def test_folders_scored_as_another_data_set_are_refused(scored, tmp_path):
    """score records the data set it read the labels as; a folder scored as another one (here its
    summary.json says so, the rows alike) is refused naming --dataset."""
    assert load_evaluation(scored["unet"]).scored_with == {
        "dataset": "nnunet",
        "foreground_label": [1, 2, 3],
        "empty_value": None,
        "volumetric": True,
        "grid": "labels",
    }
    other = shutil.copytree(scored["fpa"] / "metrics", tmp_path / "other" / "metrics")
    summary = json.loads((other / "summary.json").read_text())
    summary["scored_with"]["dataset"] = "own"
    (other / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match=r"were scored with different --dataset: own and nnunet \(summary"):
        compare_folders([scored["unet"], other])


def _write(folder: Path, rows: list[dict]) -> Path:
    from pam_monai.engines.case_metrics import write_case_metrics

    write_case_metrics(rows, folder)
    return folder


def _row(case: str, pred: np.ndarray, target: np.ndarray) -> dict:
    from pam_monai.metrics import case_metrics

    return {"case": case, **case_metrics(pred, target)}


def test_folders_scored_against_different_labels_are_refused(tmp_path):
    """The evaluation's writer (CaseMetrics, score): a case whose target is empty in one folder and
    not in the other was scored against other labels (foreground label, data set)."""
    target, pred = np.zeros((8, 8)), np.zeros((8, 8))
    target[2:5, 2:5], pred[2:6, 2:5] = 1, 1
    a = _write(tmp_path / "a", [_row("c1", pred, target), _row("c2", pred, target)])
    b = _write(tmp_path / "b", [_row("c1", pred, np.zeros((8, 8))), _row("c2", pred, target)])
    with pytest.raises(ValueError) as e:
        compare_folders([a, b])
    assert f"{b} (b) and {a} (a) were scored against different labels" in str(e.value)
    assert "case(s) c1" in str(e.value) and "--foreground_label" in str(e.value)


def test_a_metrics_csv_of_another_kind_is_refused_by_name(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.csv").write_text("case,dice\nc1,0.5\n")
    with pytest.raises(ValueError, match=r"a/metrics.csv: no column\(s\) iou, hd95, fp_rate, fn_rate"):
        load_evaluation(tmp_path / "a")


def test_a_summary_of_another_metrics_csv_is_named(scored, tmp_path, caplog):
    copy = shutil.copytree(scored["fpa"] / "metrics", tmp_path / "fpa")
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**summary, "metrics_csv_sha256": "0" * 64}))
    with caplog.at_level("WARNING", logger="pam_monai"):
        load_evaluation(copy)
    assert f"{copy / 'summary.json'} does not summarise the metrics.csv beside it" in caplog.text
    assert load_evaluation(copy).scored_with is None  # its settings may be another run's too
    caplog.clear()
    with caplog.at_level("WARNING", logger="pam_monai"):
        fresh = load_evaluation(scored["fpa"])
    assert "does not summarise" not in caplog.text
    assert fresh.scored_with == summary["scored_with"]


def _bundle_eval(folder: Path, rows: list[dict], spec, network: str, empty_value=None, **scoring) -> Path:
    """``rows`` written as a bundle's evaluation writes them (its CaseMetrics, told the data set,
    the network and the bundle by evaluate.json): ``<folder>/eval``."""
    from pam_monai.engines import CaseMetrics
    from pam_monai.metrics import summarize

    metrics = CaseMetrics(
        "test_", empty_value=empty_value, dataset=spec, network=network, bundle=f"x_{network}", **scoring
    )
    metrics.rows, metrics.summary = rows, summarize(rows)
    metrics.write(folder / "eval")
    return folder


def test_a_bundle_evaluation_records_how_it_scored_as_score_does(scored, tmp_path):
    """A bundle's evaluation recorded nothing of how it scored (score records ``scored_with``), so
    compare could not tell a score folder and a bundle folder scored differently apart, named the
    folders after their paths, and headed HD95 "label units". It records the same settings (same
    values and types as score's), the network and the bundle: compare checks the settings across
    the two kinds, names bundle folders after their network, and heads HD95 in mm for volumes."""
    from pam_monai.data import get_spec
    from pam_monai.experiments.results import read_case_metrics

    spec = get_spec("nnunet", root=scored["root"])
    rows = read_case_metrics(scored["fpa"] / "metrics" / "metrics.csv")
    bundle = _bundle_eval(tmp_path / "mine", rows, spec, "fpa")
    recorded = json.loads((bundle / "eval" / "summary.json").read_text())
    by_score = json.loads((scored["unet"] / "metrics" / "summary.json").read_text())["scored_with"]
    assert recorded["scored_with"] == by_score and (recorded["network"], recorded["bundle"]) == (
        "fpa",
        "x_fpa",
    )
    assert [type(v) for v in recorded["scored_with"].values()] == [type(v) for v in by_score.values()]
    rows_compared, evaluations, *_ = compare_folders([scored["unet"], bundle], metrics=["iou"])
    assert [e.name for e in evaluations] == ["unet", "fpa"]  # the bundle folder after its network
    assert "| HD95 (mm) |" in compare(str(scored["unet"]), str(bundle), output=str(tmp_path / "cmp"))
    other = _bundle_eval(tmp_path / "other", rows, spec, "rfna", foreground_label="enhancing")
    with pytest.raises(
        ValueError, match=r"were scored with different --foreground_label: \[3\] and \[1, 2, 3\]"
    ):
        compare_folders([scored["unet"], other])
    hundred = _bundle_eval(tmp_path / "hundred", rows, spec, "unet", empty_value=100)
    with pytest.raises(ValueError, match=r"were scored with different --empty_value: 100.0 and None"):
        compare_folders([scored["unet"], hundred])
    # two runs of one network: told apart by their bundles, else by their folders
    again = _bundle_eval(tmp_path / "again", rows, spec, "fpa")
    assert default_names([load_evaluation(bundle), load_evaluation(again)]) == ["mine", "again"]


def test_different_empty_values_are_refused_with_advice_each_folder_can_follow(scored, tmp_path):
    """The refusal said "score (or evaluate) both with the same --empty_value", but a bundle has no
    empty_value id (its evaluation records None: the image diagonal). Against a bundle folder it now
    says to score the score folder again with the bundle folder's value; two score folders, the
    same --empty_value; the HD95 rows alone name what a bundle's evaluation uses."""
    from pam_monai.data import get_spec
    from pam_monai.experiments.results import read_case_metrics

    spec = get_spec("nnunet", root=scored["root"])
    rows = read_case_metrics(scored["fpa"] / "metrics" / "metrics.csv")
    masks = _masks(scored["root"], tmp_path / "masks", 0.01, 3, empty=("SYN_002",))
    score_predictions(masks, "nnunet", scored["root"], tmp_path / "hundred", empty_value=100.0)
    bundle = _bundle_eval(tmp_path / "mine", rows, spec, "fpa")
    with pytest.raises(ValueError) as e:
        compare_folders([bundle, tmp_path / "hundred"])
    assert "evaluate both" not in str(e.value)
    assert (
        f"{bundle} (fpa) is a bundle's evaluation: a bundle's evaluation gives such a case the image "
        "diagonal, as score does without --empty_value; no bundle id changes it; score the masks of "
        f"{tmp_path / 'hundred'} (hundred) again without --empty_value to match it"
    ) in str(e.value)
    given = _bundle_eval(tmp_path / "given", rows, spec, "unet", empty_value=100)
    with pytest.raises(
        ValueError, match=r"score the masks of .*unet\) again with --empty_value 100 to match"
    ):
        compare_folders([scored["unet"], given])
    with pytest.raises(ValueError, match=r"; score both with the same --empty_value \(None: without it"):
        compare_folders([scored["unet"], tmp_path / "hundred"])
    plain = _without_settings(tmp_path / "hundred", tmp_path / "plain" / "eval")
    score_predictions(masks, "nnunet", scored["root"], tmp_path / "default")
    with pytest.raises(
        ValueError, match=r"score both with the same --empty_value \(a bundle's evaluation gives"
    ):
        compare_folders([tmp_path / "default", plain])


def _recorded_before_volumetric(folder: Path) -> Path:
    """``folder``'s summary.json as written before scored_with recorded ``volumetric``."""
    path = folder / "eval" / "summary.json"
    summary = json.loads(path.read_text())
    del summary["scored_with"]["volumetric"]
    path.write_text(json.dumps(summary))
    return folder


def test_hd95_is_headed_in_pixels_for_2d_images_and_label_units_when_unknown(scored, tmp_path):
    """HD95 is in pixels for 2-D images (CityScapes, own 2-D data), in mm for volumes; a folder that
    records nothing (an older summary.json) keeps "label units", as does own data recorded without
    ``volumetric`` (the paper's data sets tell by their name)."""
    from pam_monai.data import get_spec
    from pam_monai.experiments.results import read_case_metrics

    rows = read_case_metrics(scored["fpa"] / "metrics" / "metrics.csv")

    def heading(*folders) -> str:
        out = compare(*map(str, folders), output=str(tmp_path / "cmp"), metrics="hd95")
        return next(line.split(" | ")[2] for line in out.splitlines() if "HD95" in line)

    flat = [_bundle_eval(tmp_path / n, rows, get_spec("cityscapes"), n) for n in ("fpa", "rfna")]
    assert heading(*flat) == "HD95 (pixels)"
    assert heading(*map(_recorded_before_volumetric, flat)) == "HD95 (pixels)"
    bare = _without_settings(scored["unet"] / "metrics", tmp_path / "bare" / "eval")
    assert heading(scored["unet"], scored["fpa"]) == "HD95 (mm)"
    assert heading(scored["unet"], bare) == "HD95 (label units)"
    spec = get_spec("nnunet", root=scored["root"])
    own = [
        _recorded_before_volumetric(_bundle_eval(tmp_path / f"own_{n}", rows, spec, n)) for n in ("a", "b")
    ]
    assert heading(*own) == "HD95 (label units)"


def test_cityscapes_evaluation_and_score_at_other_resolutions_are_refused(tmp_path):
    """A CityScapes evaluation scores the network's 128 x 256 grid, score the labels' full
    resolution: HD95 is in pixels of another size (8x for 2048 x 1024 frames), so compare reported
    that difference as the model's. Both record the grid they scored on, and compare refuses
    folders scored on different grids, naming them and the way to compare at one resolution;
    two score folders (or two evaluations) still compare."""
    from PIL import Image

    from pam_monai.data import get_spec
    from pam_monai.experiments.results import read_case_metrics

    root = synth("cityscapes", tmp_path / "cs", cases=1)
    masks = []
    for k in range(2):
        folder = tmp_path / f"masks{k}"
        folder.mkdir()
        for label in sorted(root.glob("gtFine/*/*/*_gtFine_labelIds.png")):
            ids = np.array(Image.open(label))
            mask = (ids >= 26) ^ (np.random.default_rng(k).random(ids.shape) < 0.01)
            case = label.name[: -len("_gtFine_labelIds.png")]
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{case}_vehicles.png")
        score_predictions(folder, "cityscapes", root, folder / "metrics")
        masks.append(folder)
    rows = read_case_metrics(masks[0] / "metrics" / "metrics.csv")
    evaluation = _bundle_eval(tmp_path / "cityscapes_fpa", rows, get_spec("cityscapes"), "fpa")  # same rows
    with pytest.raises(ValueError) as e:
        compare_folders([evaluation, masks[0]])
    assert (
        "were scored on different grids: the labels' own and 128 x 256 (summary.json's scored_with)"
        in str(e.value)
    )
    assert "python -m pam_monai score" in str(e.value)
    rows, *_ = compare_folders(masks, metrics=["hd95"])  # both at the labels' resolution
    assert rows[0]["cases"] == len(read_case_metrics(masks[1] / "metrics" / "metrics.csv"))


def test_the_summary_line_gives_hd95_in_its_unit_and_grid(tmp_path, caplog):
    """The evaluation's closing line gave HD95 without a unit ("hd95 97.56 +- 23.2"), where a
    CityScapes evaluation's is in pixels of the 128 x 256 grid, score's in the labels' pixels and a
    volume's in mm: the line now says which, from the settings summary.json records."""
    from pam_monai.data import get_spec
    from pam_monai.engines.case_metrics import scored_with, write_case_metrics
    from pam_monai.engines.data import evaluation_grid
    from pam_monai.metrics import summarize

    rows = [
        {"case": "a", "iou": 0.5, "dice": 0.6, "hd95": 12.0, "fp_rate": 0.1, "fn_rate": 0.2}
        | {"target_empty": False, "pred_empty": False}
    ]
    city = get_spec("cityscapes")
    for settings, unit in (
        (scored_with(city, grid=evaluation_grid(city)), "hd95 12 +- 0 pixels of the 128 x 256 grid, "),
        (scored_with(city), "hd95 12 +- 0 pixels, "),
        (scored_with(get_spec("brats")), "hd95 12 +- 0 mm, "),
    ):
        caplog.clear()
        with caplog.at_level("INFO", logger="pam_monai"):
            write_case_metrics(rows, tmp_path / "out", {"scored_with": settings, **summarize(rows)})
        assert unit in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="pam_monai"):
        write_case_metrics(rows, tmp_path / "out")  # nothing recorded: no unit claimed
    assert "hd95 12 +- 0, " in caplog.text, caplog.text
