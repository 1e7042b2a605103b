"""The data checker: every bad input gives a message naming case, file and problem (pam_monai.data.checker)."""

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pam_monai.cli import main as cli
from pam_monai.data import check_dataset, synth
from pam_monai.data.checker import check_label_values, label_like

A, B, C = "Brats18_SYN_001_1", "Brats18_SYN_002_1", "Brats18_SYN_003_1"
NUMBER = "give them a number and save the file again (e.g. 0 outside the field of view: numpy.nan_to_num)"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("pristine")
    return {
        "brats": synth("brats", base / "brats", cases=3, slices=4),
        "isles": synth("isles", base / "isles", cases=2, max_slices=2),
        "cityscapes": synth("cityscapes", base / "city", cases=1, size=(64, 32)),
    }


@pytest.fixture
def brats(pristine, tmp_path):
    root = tmp_path / "brats"
    shutil.copytree(pristine["brats"], root)
    return root


def case_file(root, case, name):
    return root / "HGG" / case / f"{case}_{name}.nii.gz"


def rewrite(path, data=None, affine=None):
    img = nib.load(path)
    data = np.asanyarray(img.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), str(path))


def messages(report):
    return [str(p) for p in report.problems]


def test_clean_synthetic_set_passes_with_a_summary(pristine):
    report = check_dataset("brats", pristine["brats"])
    assert report.ok, report.format()
    for case in (A, B, C):
        seg = np.asanyarray(nib.load(case_file(pristine["brats"], case, "seg")).dataobj)
        s = report.summary(case)
        assert s.shape == (4, 160, 160, 4)
        assert s.foreground == int((seg == 4).sum()) > 0
        assert s.foreground_slices == int((seg == 4).any(axis=(0, 1)).sum())
        assert s.inside_crop is True


def test_spacing_summary_counts_cases(brats):
    """The summary's spacing line counts the cases of each spacing ('1 case', not '1 cases')."""
    for name in ("flair", "t1", "t1ce", "t2", "seg"):
        path = case_file(brats, A, name)
        rewrite(path, affine=np.diag([2.0, 2.0, 2.0, 1.0]) @ nib.load(path).affine)
    line = next(x for x in check_dataset("brats", brats).format().splitlines() if "voxel spacing" in x)
    assert "(2 cases)" in line and "2x2x2 (1 case)" in line, line


def test_verdict_counts_in_the_singular(tmp_path):
    """The verdict line reads '1 case', '1 problem', '1 warning' (was '1 cases', '1 problems')."""
    root = synth("brats", tmp_path / "one", cases=1, slices=8)
    seg = next(root.rglob("*_seg.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(nib.load(seg).shape, np.uint8), nib.load(seg).affine), seg)
    verdict = check_dataset("brats", root).format().splitlines()[-1]
    assert verdict.endswith(": 1 case, 0 with problems, 0 problems, 1 warning"), verdict
    next(root.rglob("*_t1.nii.gz")).unlink()
    verdict = check_dataset("brats", root).format().splitlines()[-1]
    assert verdict.endswith(": 1 case, 1 with problems, 1 problem, 0 warnings"), verdict


def test_missing_modality(brats):
    case_file(brats, A, "t1").unlink()
    report = check_dataset("brats", brats)
    assert messages(report) == [f"{A}: {A}_t1.nii.gz: missing modality 't1'"]
    assert not report.summary(A).ok and report.summary(B).ok


def test_missing_label(brats):
    case_file(brats, B, "seg").unlink()
    assert messages(check_dataset("brats", brats)) == [f"{B}: {B}_seg.nii.gz: missing label 'seg'"]


def test_truncated_and_garbage_files(brats):
    path = case_file(brats, A, "flair")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    case_file(brats, B, "t2").write_bytes(gzip.compress(b"this is not a NIfTI file"))
    report = check_dataset("brats", brats)
    (trunc, garbage) = messages(report)
    assert trunc.startswith(f"{A}: {A}_flair.nii.gz: unreadable or truncated file")
    assert garbage.startswith(f"{B}: {B}_t2.nii.gz: unreadable or truncated file")
    # and what to do: the messages named the library's error alone ("Compressed file ended ...")
    assert all(m.endswith("): copy or convert it again, or leave the case out") for m in (trunc, garbage))


def test_mismatched_shape(brats):
    path = case_file(brats, A, "t2")
    rewrite(path, np.asanyarray(nib.load(path).dataobj)[..., :3])
    assert messages(check_dataset("brats", brats)) == [
        f"{A}: {A}_t2.nii.gz: shape (240, 240, 3) differs from {A}_flair.nii.gz (240, 240, 4): resample it "
        "onto that file's grid (e.g. MONAI's ResampleToMatch)"
    ]


def test_mismatched_affine(brats):
    path = case_file(brats, B, "t1ce")
    affine = nib.load(path).affine.copy()
    affine[0, 3] += 2.0
    rewrite(path, affine=affine)
    assert messages(check_dataset("brats", brats)) == [
        f"{B}: {B}_t1ce.nii.gz: affine differs from {B}_flair.nii.gz (largest difference 2): resample it onto "
        "that file's grid (e.g. MONAI's ResampleToMatch), or copy that file's affine where only the header is wrong"
    ]


def test_nan_and_inf_voxels(brats):
    path = case_file(brats, A, "flair")
    data = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
    data[100, 100, 1] = np.nan
    rewrite(path, data)
    path = case_file(brats, C, "t1")
    data = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
    data[100, 100, 1:3] = np.inf
    rewrite(path, data)
    assert messages(check_dataset("brats", brats)) == [
        f"{A}: {A}_flair.nii.gz: 1 NaN and 0 Inf voxels: {NUMBER}",
        f"{C}: {C}_t1.nii.gz: 0 NaN and 2 Inf voxels: {NUMBER}",
    ]


def test_unexpected_label_values(brats):
    path = case_file(brats, A, "seg")
    seg = np.asanyarray(nib.load(path).dataobj).copy()
    seg[0, 0, 0] = 7
    rewrite(path, seg)
    path = case_file(brats, B, "seg")
    seg = np.asanyarray(nib.load(path).dataobj).copy()
    seg[seg == 4] = 3  # BraTS 2021 convention in a 2018 set
    rewrite(path, seg)
    assert messages(check_dataset("brats", brats)) == [
        f"{A}: {A}_seg.nii.gz: unexpected label values 7 (allowed 0, 1, 2, 4)",
        f"{B}: {B}_seg.nii.gz: unexpected label values 3 (allowed 0, 1, 2, 4; "
        "BraTS 2021+ labels: pass foreground_label=3 (bundles: --foreground_label 3))",
    ]
    # under the 2021 convention, case B is fine and A still is not
    report = check_dataset("brats", brats, foreground_label=3)
    assert report.summary(B).ok and not report.summary(A).ok


def test_non_integer_label(brats):
    path = case_file(brats, C, "seg")
    seg = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
    seg[1, 1, 1] = 0.5
    rewrite(path, seg)
    assert messages(check_dataset("brats", brats)) == [
        f"{C}: {C}_seg.nii.gz: non-integer label values [0.5] (an interpolated mask): resample label "
        "maps by nearest neighbour, or round them to the label values"
    ]


def test_empty_case_folder_and_empty_root(brats, tmp_path):
    shutil.rmtree(brats / "HGG" / C)
    (brats / "HGG" / C).mkdir()
    report = check_dataset("brats", brats)
    assert messages(report) == [f"{C}: {brats / 'HGG' / C}: empty folder"]
    assert len(report.cases) == 3 and not report.summary(C).ok
    (tmp_path / "nothing").mkdir()
    (msg,) = messages(check_dataset("brats", tmp_path / "nothing"))
    assert msg.startswith(f"nothing: {tmp_path / 'nothing'}: empty folder: no HGG case folders")
    (msg,) = messages(check_dataset("brats", tmp_path / "absent"))
    assert msg == f"absent: {tmp_path / 'absent'}: data folder does not exist"


def test_one_bad_case_does_not_hide_the_others_and_the_command_fails(brats, capsys):
    case_file(brats, A, "t1").unlink()
    seg = case_file(brats, C, "seg")
    data = np.asanyarray(nib.load(seg).dataobj).copy()
    data[5, 5, 0] = 7
    rewrite(seg, data)
    with pytest.raises(SystemExit) as exit_info:
        cli(["check", "--dataset", "brats", "--root", str(brats), "--quiet"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert f"ERROR {A}: {A}_t1.nii.gz: missing modality 't1'" in out
    assert f"ERROR {C}: {C}_seg.nii.gz: unexpected label values 7" in out
    assert "FAILED: brats" in out and "3 cases, 2 with problems" in out


def test_check_command_succeeds_on_clean_data(pristine, capsys):
    cli(["check", "--dataset", "brats", "--root", str(pristine["brats"])])
    out = capsys.readouterr().out
    assert "4x160x160x4" in out and out.rstrip().splitlines()[-1].startswith("OK: brats")


def test_isles_problems(pristine, tmp_path):
    root = tmp_path / "isles"
    shutil.copytree(pristine["isles"], root)
    (ot,) = (root / "TRAINING" / "case_1").glob("SMIR.Brain.XX.O.OT.*")
    shutil.rmtree(ot)
    (cbf,) = (root / "TRAINING" / "case_2").glob("SMIR.Brain.XX.O.CT_CBF.*/*.nii")
    cbf.write_bytes(cbf.read_bytes()[:1000])
    report = check_dataset("isles", root)
    missing, truncated = messages(report)
    assert missing == "case_1: SMIR.Brain.XX.O.OT.<id>/SMIR.Brain.XX.O.OT.<id>.nii: missing label 'OT'"
    assert truncated.startswith(f"case_2: {cbf.name}: unreadable or truncated file (OSError: Expected")
    assert "\n" not in truncated


def test_isles_label_values_say_what_to_do_without_a_dataset_json(pristine, tmp_path):
    """ISLES 2018 has no dataset.json: a 0 / 255 OT mask is told to become 0 / 1 (own data's advice,
    naming 255 in dataset.json, does not apply), and another value says what the OT masks hold."""
    root = tmp_path / "isles"
    shutil.copytree(pristine["isles"], root)
    (ot1,) = (root / "TRAINING" / "case_1").glob("SMIR.Brain.XX.O.OT.*/*.nii")
    (ot2,) = (root / "TRAINING" / "case_2").glob("SMIR.Brain.XX.O.OT.*/*.nii")
    rewrite(ot1, (np.asanyarray(nib.load(ot1).dataobj) * 255).astype(np.uint8))
    lesion = np.asanyarray(nib.load(ot2).dataobj).copy()
    lesion[lesion == 1] = 2
    rewrite(ot2, lesion)
    assert messages(check_dataset("isles", root)) == [
        f"case_1: {ot1.name}: unexpected label values 255 (allowed 0, 1; a 0 / 255 mask: save it as 0 / 1, "
        "e.g. nibabel's (mask > 0).astype('uint8'))",
        f"case_2: {ot2.name}: unexpected label values 2 (allowed 0, 1): ISLES 2018's OT masks are 0 / 1 "
        "(1 = lesion): correct this file, or train on other labels as own data (nnU-Net layout, --task nnunet, "
        "its labels named in dataset.json)",
    ]


def test_isles_spacings_beyond_the_five_shown_are_counted_with_their_range(tmp_path):
    """ISLES 2018 cases nearly all have a spacing of their own: the line named five and said nothing of
    the others, as if the data set had five cases; now it counts them and gives every axis's range."""
    root = synth("isles", tmp_path / "isles", cases=7, max_slices=2)
    for i, case in enumerate(sorted((root / "TRAINING").iterdir())):
        for path in case.glob("*/*.nii"):
            if "CT_4DPWI" not in path.name:
                data = np.array(nib.load(path).dataobj)  # a copy: a .nii is memory-mapped, then overwritten
                rewrite(path, data, affine=np.diag([0.8 + 0.01 * i, 0.8 + 0.01 * i, 4.0 + i, 1.0]))
    (line,) = [line for line in check_dataset("isles", root).geometry_lines() if "spacing" in line]
    assert line.endswith(", 2 other spacings (2 cases); all cases: 0.8-0.86 x 0.8-0.86 x 4-10"), line


def test_cityscapes_problems(pristine, tmp_path):
    root = tmp_path / "city"
    shutil.copytree(pristine["cityscapes"], root)
    frame = "aachen_000000_000019"
    (root / "gtFine" / "train" / "aachen" / f"{frame}_gtFine_labelIds.png").unlink()
    label = root / "gtFine" / "train" / "bochum" / "bochum_000000_000019_gtFine_labelIds.png"
    lab = np.array(Image.open(label))
    lab[0, 0] = 40
    Image.fromarray(lab).save(label)
    image = root / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000019_leftImg8bit.png"
    Image.fromarray(np.array(Image.open(image))[:16]).save(image)
    report = check_dataset("cityscapes", root)
    assert messages(report) == [
        f"{frame}: {frame}_gtFine_labelIds.png: missing label 'labelIds'",
        "bochum_000000_000019: bochum_000000_000019_gtFine_labelIds.png: unexpected label values 40 "
        "(allowed " + ", ".join(map(str, range(34))) + ")",
        "frankfurt_000000_000019: frankfurt_000000_000019_gtFine_labelIds.png: shape (32, 64) differs from "
        "frankfurt_000000_000019_leftImg8bit.png (16, 64): resize it to that image's size (by nearest neighbour, "
        "PIL's Image.NEAREST)",
    ]
    ok = report.summary("bremen_000000_000019")
    assert ok.ok and ok.shape == (3, 128, 256)


def test_check_label_values():
    assert check_label_values(np.array([0, 1, 2, 4], np.uint8), (0, 1, 2, 4)) is None
    assert (
        check_label_values(np.array([0, 5, 9], np.int16), (0, 1))
        == "unexpected label values 5, 9 (allowed 0, 1)"
    )


def test_a_volume_without_slices_is_a_problem_not_a_crash(brats):
    """A 240 x 240 x 0 file (e.g. written by a converter that lost the slices) is reported per case."""
    path = case_file(brats, A, "t1")
    rewrite(path, np.zeros((240, 240, 0), np.int16))
    msgs = messages(check_dataset("brats", brats))
    assert any(m.startswith(f"{A}: {A}_t1.nii.gz: expected a non-empty 3-D volume") for m in msgs), msgs


def test_a_label_map_in_a_modality_s_place_is_a_problem(brats, pristine):
    """The case's segmentation copied over its T1 (or a binary mask) would train and segment without a
    word; an image has hundreds of values, a label map a handful: named with the file."""
    shutil.copy(case_file(brats, A, "seg"), case_file(brats, A, "t1"))
    mask = np.asanyarray(nib.load(case_file(brats, B, "flair")).dataobj) > 0
    rewrite(case_file(brats, B, "flair"), mask.astype(np.float32))
    values = ", ".join(map(str, np.unique(nib.load(case_file(brats, A, "seg")).dataobj).tolist()))
    assert messages(check_dataset("brats", brats)) == [
        f"{A}: {A}_t1.nii.gz: holds only 4 distinct values ({values}), as a label map or mask does, not an "
        "image: give the t1 image (the segmentation or a mask in its place?)",
        f"{B}: {B}_flair.nii.gz: holds only 2 distinct values (0, 1), as a label map or mask does, not an "
        "image: give the flair image (the segmentation or a mask in its place?)",
    ]
    isles = pristine["isles"]
    report = check_dataset("isles", isles)
    assert report.ok and not report.warnings  # the synthetic perfusion maps are images


def test_a_coarse_isles_perfusion_map_is_named_not_refused(pristine, tmp_path):
    """A perfusion map stored with a handful of integer values (Tmax in whole seconds, say) cannot be
    told from a mask for sure: a warning naming it, not a refusal of the case."""
    isles = tmp_path / "isles"
    shutil.copytree(pristine["isles"], isles)
    path = sorted(isles.rglob("*CT_Tmax*.nii"))[0]
    data = np.asanyarray(nib.load(path).dataobj)
    rewrite(path, np.clip(np.round(data / max(float(data.max()), 1e-6) * 8), 0, 8).astype(np.int16))
    report = check_dataset("isles", isles)
    assert report.ok, report.format()
    assert any(path.name in str(w) and "distinct values" in str(w) for w in report.warnings), report.warnings


def test_a_coarse_isles_map_given_to_inference_is_not_said_to_be_trained_on(pristine, tmp_path):
    """Inference reads new images through check_images: the coarse-map warning said "trained on as it
    is" there too, where nothing is trained; it says the map is used as it is, and why that may be right."""
    from pam_monai.data import get_spec
    from pam_monai.data.checker import check_images

    isles = Path(shutil.copytree(pristine["isles"], tmp_path / "isles"))
    case = isles / "TRAINING" / "case_1"
    images = [next(case.glob(f"SMIR.Brain.XX.O.CT_{mod}.*/*.nii")) for mod in ("CBF", "MTT", "CBV", "Tmax")]
    data = np.array(nib.load(images[3]).dataobj)
    rewrite(images[3], np.clip(np.round(data / max(float(data.max()), 1e-6) * 8), 0, 8).astype(np.int16))
    image, _, problems, warnings = check_images(get_spec("isles"), "case_1", images)
    assert image is not None and not problems
    (warning,) = warnings
    assert "trained on" not in warning.message and warning.message.endswith(
        "; used as it is (a perfusion map stored in whole units, e.g. Tmax in seconds, has few values too)"
    ), warning.message


def test_a_4d_modality_file_says_what_to_do(brats):
    """BraTS keeps one 3-D file per modality: a 4-D file of one volume (a converter's trailing axis)
    or of several (the modalities stacked) is named with what to save instead."""
    t1 = np.asanyarray(nib.load(case_file(brats, A, "t1")).dataobj)
    rewrite(case_file(brats, A, "t1"), t1[..., None])
    rewrite(case_file(brats, B, "t1"), np.stack([t1, t1], -1))
    assert messages(check_dataset("brats", brats)) == [
        f"{A}: {A}_t1.nii.gz: expected a non-empty 3-D volume, got shape (240, 240, 4, 1) (a 4-D file of one "
        "volume: save it as 3-D, e.g. nibabel.squeeze_image)",
        f"{B}: {B}_t1.nii.gz: expected a non-empty 3-D volume, got shape (240, 240, 4, 2) (a 4-D file of 2 "
        "volumes: brats keeps one 3-D volume per file, each modality (flair, t1, t1ce, t2) in its own file; save "
        "the one this file stands for)",
    ]


def test_datalist_entries_are_checked_with_the_data_set(brats, tmp_path):
    """A hand-edited datalist (training's data_list_file_path) is checked too: an entry with three
    of the four modality files and one whose files are not there are named with the datalist."""
    from pam_monai.data import build_datalist

    datalist = build_datalist("brats", brats)
    datalist["training"][0]["image"].pop()
    datalist["training"][1]["label"] = f"HGG/{B}/{B}_seg_corrected.nii.gz"
    path = tmp_path / "brats.json"
    path.write_text(json.dumps(datalist))
    assert messages(check_dataset("brats", brats, datalist=path)) == [
        f"{A}: {path}: 'image' lists 3 file(s), but the data set has 4 channels ('flair', 't1', 't1ce', 't2'): one "
        "file per channel, in that order",
        f"{B}: {path}: HGG/{B}/{B}_seg_corrected.nii.gz: not found; its paths are relative to the data root {brats}",
    ]


def test_a_datalist_of_cases_not_on_disk_says_so_once_more_at_the_end(brats, tmp_path, capsys):
    """The shipped 210-case BRATS list over a folder with a few of its cases: each absent case in
    one line naming one file, then the likely cause of them all (was: every path of every case)."""
    from pam_monai.data import build_datalist

    datalist = build_datalist("brats", brats)
    extra = [
        {**e, "case": e["case"] + "_x", "image": [f.replace(".nii", "_x.nii") for f in e["image"]]}
        for e in datalist["training"][:2]
    ]
    for e in extra:
        e["label"] = e["label"].replace(".nii", "_x.nii")
    datalist["training"] += extra
    path = tmp_path / "brats.json"
    path.write_text(json.dumps(datalist))
    report = check_dataset("brats", brats, datalist=path)
    msgs = messages(report)
    first = extra[0]["image"][0]
    assert msgs[0] == (
        f"{extra[0]['case']}: {path}: none of its 5 files found (e.g. {first}); its paths are relative to the "
        f"data root {brats}"
    )
    # the closing hint is no case: the verdict counted it as one more case with problems ("3 with problems")
    assert len(msgs) == 2 and len(report.notes) == 1
    assert report.notes[0].startswith(f"{path}: 2 cases not on disk under the data root {brats}: ")
    assert "keep the entries whose files exist (data_lists/README.md)" in report.notes[0]
    lines = report.format().splitlines()
    assert lines[-2] == f"NOTE {report.notes[0]}" and lines[-3].startswith("ERROR ")
    # the entries not on disk are among those with problems, not among the cases: the verdict said
    # "3 cases, 2 with problems" (and "1 case, 4 with problems" with one case on disk and 3 missing)
    assert lines[-1].startswith(
        f"FAILED: brats under {brats}: 3 cases on disk, 2 with problems (2 listed but missing), 2 problems"
    )
    with pytest.raises(ValueError) as err:
        report.raise_if_failed()
    assert str(err.value).splitlines()[1:] == [*msgs, report.notes[0]]
    with pytest.raises(SystemExit):  # --quiet keeps it too
        cli(["check", "--dataset", "brats", "--root", str(brats), "--datalist", str(path), "--quiet"])
    assert capsys.readouterr().out.splitlines()[-2] == f"NOTE {report.notes[0]}"


@pytest.mark.parametrize("text", [None, '{"training": [', '["Brats18_SYN_001_1"]'])
def test_a_datalist_that_cannot_be_read_is_named_before_any_volume_is(brats, tmp_path, monkeypatch, text):
    """A mistyped --datalist path, a truncated file or a JSON list came out only after every volume
    of the data set had been read (minutes for BraTS), and training's check likewise."""
    import pam_monai.data.checker as checker

    def no_reading(*args, **kwargs):
        raise AssertionError("a volume was read before the datalist")

    monkeypatch.setattr(checker, "_read", no_reading)
    path = tmp_path / "brats.json"
    if text is not None:
        path.write_text(text)
    error = FileNotFoundError if text is None else ValueError
    with pytest.raises(error, match=str(path)):
        check_dataset("brats", brats, datalist=path)


def test_datalist_messages_fit_absolute_paths_and_a_case_twice_in_one_list(brats, tmp_path):
    """An absolute path that is not there was said to be relative to the data root (it is used as
    it is), and a case listed twice in one list was said to be in two splits."""
    from pam_monai.data import build_datalist

    datalist = build_datalist("brats", brats)
    gone = tmp_path / "elsewhere"
    for e in datalist["training"][:2]:
        e["image"] = [str(gone / f) for f in e["image"]]
        e["label"] = str(gone / e["label"])
    datalist["training"].append(dict(datalist["training"][2]))
    path = tmp_path / "brats.json"
    path.write_text(json.dumps(datalist))
    assert messages(check_dataset("brats", brats, datalist=path)) == [
        f"{A}: {path}: none of its 5 files found (e.g. {gone}/HGG/{A}/{A}_flair.nii.gz)",
        f"{B}: {path}: none of its 5 files found (e.g. {gone}/HGG/{B}/{B}_flair.nii.gz)",
        f"{C}: {path}: listed twice in training: keep one entry (else it counts twice)",
    ]


def test_a_datalist_entry_with_other_than_paths_is_named_not_a_crash(brats, tmp_path):
    """A label given as a list (or a number among the images) stopped the check with 'TypeError:
    unsupported operand type(s) for /', naming neither the datalist nor the case."""
    from pam_monai.data import build_datalist

    datalist = build_datalist("brats", brats)
    datalist["training"][0]["label"] = [datalist["training"][0]["label"]]
    datalist["training"][1]["image"][2] = 3
    path = tmp_path / "brats.json"
    path.write_text(json.dumps(datalist))
    expected = "'image' and 'label' must be paths ('image': one, or a list of them)"
    assert messages(check_dataset("brats", brats, datalist=path)) == [
        f"{A}: {path}: {expected}",
        f"{B}: {path}: {expected}",
    ]


def test_a_datalist_whose_n_folds_is_not_a_number_is_named_not_a_crash(brats, tmp_path):
    """'n_folds': "five" stopped the check with int()'s bare "invalid literal for int() with base 10",
    naming neither the datalist nor the key."""
    from pam_monai.data import build_datalist

    datalist = {**build_datalist("brats", brats), "n_folds": "five"}
    path = tmp_path / "brats.json"
    path.write_text(json.dumps(datalist))
    assert messages(check_dataset("brats", brats, datalist=path)) == [
        f"n_folds: {path}: datalist's 'n_folds' 'five' is not a whole number (the number of folds, e.g. 5)"
    ]
    path.write_text(json.dumps({**datalist, "n_folds": 0}))  # no fold to deal the entries into
    report = check_dataset("brats", brats, datalist=path, datalist_splits=["test"])
    assert (
        all("cross-validation entries need a fold" in m for m in messages(report))
        and len(report.problems) == 3
    )


def test_a_list_of_entries_that_no_split_reads_is_named(brats, tmp_path):
    """A list under a misspelt key ('traning') stopped training at "no 'training' list (nor a
    'training' list)" naming no file; under another tool's key ('testing') it was ignored without a
    word, and cross-validated evaluation scored its fold of 'training' instead of that test set."""
    from pam_monai.data import build_datalist

    datalist = build_datalist("brats", brats)
    external = [{k: v for k, v in e.items() if k != "fold"} for e in datalist["training"][:1]]
    path = tmp_path / "brats.json"
    path.write_text(json.dumps({**datalist, "testing": external}))
    assert messages(check_dataset("brats", brats, datalist=path, datalist_splits=["test"])) == [
        f"testing: {path}: 'testing' lists 1 entries, but only 'training', 'validation' and 'test' are read: "
        "rename it 'test'"
    ]
    path.write_text(json.dumps({"traning": datalist["training"], "val": external}))
    assert messages(check_dataset("brats", brats, datalist=path)) == [
        f"traning: {path}: 'traning' lists {len(datalist['training'])} entries, but only 'training', "
        "'validation' and 'test' are read: rename it 'training'",
        f"val: {path}: 'val' lists 1 entries, but only 'training', 'validation' and 'test' are read: "
        "rename it 'validation'",
    ]


def test_evaluation_checks_the_files_of_its_own_split_only(brats, tmp_path):
    """With the 5-fold list and only the evaluated fold's cases on disk, evaluation was refused over
    the other folds' missing files; a case listed twice or a fold out of range still refuses it,
    and check --datalist (no split) still names every missing case."""
    from pam_monai.data import build_datalist
    from pam_monai.engines import prepare_data

    datalist = build_datalist("brats", brats, n_folds=3)
    fold_of = {e["case"]: e["fold"] for e in datalist["training"]}
    test_case = next(c for c, f in fold_of.items() if f == 0)
    for case in set(fold_of) - {test_case}:
        shutil.rmtree(brats / "HGG" / case)
    path = tmp_path / "brats.json"
    path.write_text(json.dumps(datalist))
    data = prepare_data("brats", brats, path, fold=0, splits=["test"])
    assert [it["case"] for it in data["test"]] == [test_case]
    assert messages(check_dataset("brats", brats, datalist=path)) == [
        f"{c}: {path}: none of its 5 files found (e.g. HGG/{c}/{c}_flair.nii.gz); its paths are relative to the "
        f"data root {brats}"
        for c in sorted(set(fold_of) - {test_case})
    ]
    absent = next(e for e in datalist["training"] if e["fold"] == 2)
    datalist["training"] += [dict(absent), {**absent, "case": "Brats18_SYN_004_1", "fold": 3}]
    path.write_text(json.dumps(datalist))
    with pytest.raises(ValueError) as err:
        prepare_data("brats", brats, path, fold=0, splits=["test"])
    assert str(err.value).splitlines()[1:] == [
        f"{absent['case']}: {path}: listed twice in training: keep one entry (else it counts twice)",
        f"Brats18_SYN_004_1: {path}: 'fold' 3: cross-validation entries need a fold 0..2 (python -m pam_monai "
        "datalist writes them)",
    ]


def test_training_does_not_need_the_labels_of_a_test_list_kept_for_later(brats, tmp_path):
    """A training datalist whose test list has no labels (cases kept for inference) was refused at
    training start with "no 'label' (every test entry needs one)": training never reads the test
    split. Evaluating on it still needs them."""
    from pam_monai.data import build_datalist
    from pam_monai.engines import prepare_data

    datalist = build_datalist("brats", brats, n_folds=3)
    kept = next(e for e in datalist["training"] if e["fold"] == 0)
    datalist["training"].remove(kept)
    datalist["test"] = [{"case": kept["case"], "image": kept["image"]}]
    path = tmp_path / "brats.json"
    path.write_text(json.dumps(datalist))
    data = prepare_data("brats", brats, path, fold=0)
    assert [it["case"] for it in data["test"]] == [kept["case"]] and len(data["train"]) == len(
        data["val"]
    ) == 1
    with pytest.raises(
        ValueError, match=f"{kept['case']}: {path}: no 'label' \\(every test entry needs one\\)"
    ):
        prepare_data("brats", brats, path, fold=0, splits=["test"])


def test_label_like_needs_more_pixels_than_values(tmp_path):
    """A frame or volume with few pixels has few values however photographic it is: 8 x 4 frames of
    32 distinct colours (the synthetic stand-in at --size "(8,4)") are not a gtFine_color drawing,
    nor 12 distinct intensities a mask; a small mask or drawing still is."""
    frame = np.arange(8 * 4 * 3, dtype=np.uint8).reshape(4, 8, 3)
    assert label_like(frame, "RGB", colour=True) is None
    assert label_like(np.arange(12.0).reshape(2, 2, 3), "t1") is None
    drawing = np.zeros((4, 8, 3), np.uint8)
    drawing[:, 4:] = (128, 64, 128)  # road
    assert "2 colours" in label_like(drawing, "RGB", colour=True)
    assert "2 distinct values" in label_like((np.arange(12).reshape(2, 2, 3) > 5).astype(np.int16), "t1")
    root = synth("cityscapes", tmp_path / "tiny", cases=1, size=(8, 4), train_cities=2, val_cities=1)
    assert check_dataset("cityscapes", root).ok


def test_check_command_checks_an_isles_testing_set(pristine, tmp_path, capsys):
    """ISLES 2018's TESTING/ (no OT masks) could not be checked: a root holding it alone was "no
    case_<n> folders", the folder itself failed every case for its missing OT. Now both are checked
    as an unlabelled set: files, channels, shapes, spacing and orientation, with a note that labels
    were not checked; a broken image still fails the check."""
    root = tmp_path / "isles"
    shutil.copytree(pristine["isles"] / "TRAINING", root / "TESTING")
    for ot in (root / "TESTING").glob("case_*/SMIR.Brain.XX.O.OT.*"):
        shutil.rmtree(ot)
    cli(["check", "--dataset", "isles", "--root", str(root)])
    out = capsys.readouterr().out
    assert "case_1  ok      4x224x224x" in out and "voxel spacing (mm): " in out, out
    assert f"NOTE labels not checked: {root / 'TESTING'} was checked as an unlabelled set" in out, out
    assert out.rstrip().splitlines()[-1].startswith("OK: isles"), out
    (cbf,) = (root / "TESTING" / "case_2").glob("SMIR.Brain.XX.O.CT_CBF.*/*.nii")
    cbf.write_bytes(cbf.read_bytes()[:1000])
    with pytest.raises(SystemExit):
        cli(["check", "--dataset", "isles", "--root", str(root / "TESTING")])
    out = capsys.readouterr().out
    assert f"ERROR case_2: {cbf.name}: unreadable or truncated file" in out and "missing label" not in out, (
        out
    )
    assert "FAILED: isles" in out and "2 cases, 1 with problems, 1 problem" in out, out


def test_check_of_an_unlabelled_set_only_when_asked(pristine, tmp_path):
    """A training set whose labels are missing still fails; ``labels=False`` (``--unlabelled``)
    checks the images alone."""
    root = tmp_path / "isles"
    shutil.copytree(pristine["isles"], root)
    for ot in (root / "TRAINING").glob("case_*/SMIR.Brain.XX.O.OT.*"):
        shutil.rmtree(ot)
    assert not check_dataset("isles", root).ok
    report = check_dataset("isles", root, labels=False)
    assert report.ok and [c.shape[0] for c in report.cases] == [4, 4], report.format()
    assert report.notes[0].startswith("labels not checked"), report.notes


def test_unlabelled_check_of_a_datalist_needs_images_only(tmp_path, capsys):
    """``check --unlabelled --datalist`` failed every entry of an inference list (MONAI test lists
    often hold an 'image' alone) for its "no 'label'", and a listed label that is not there too,
    though inference drops labels unread. Now the entries' images alone are checked: a missing or
    broken image still fails, a label is neither required nor read, and the note says so."""
    root = synth("nnunet", tmp_path / "own", cases=1, size=(24, 20), slices=3, test_cases=2)
    images = [[f"imagesTs/SYN_00{i}_000{c}.nii.gz" for c in (0, 1)] for i in (2, 3)]
    listed = tmp_path / "test.json"
    entries = [{"image": images[0]}, {"image": images[1], "label": "labelsTs/SYN_003.nii.gz"}]
    listed.write_text(json.dumps({"test": entries}))
    cli(["check", "--root", str(root), "--unlabelled", "--datalist", str(listed), "--quiet"])
    out = capsys.readouterr().out
    assert "ERROR" not in out and out.rstrip().splitlines()[-1].startswith("OK: nnunet"), out
    assert f"so were the entries of {listed}, whose 'label' is neither required nor read" in out, out
    # the images are still read: an entry naming imagesTr's files (not the checked imagesTs) with a broken one
    (root / "imagesTr" / "SYN_001_0001.nii.gz").write_bytes(b"not a volume")
    entries.append({"image": ["imagesTr/SYN_001_0000.nii.gz", "imagesTr/SYN_001_0001.nii.gz"]})
    entries.append({"image": ["imagesTs/SYN_009_0000.nii.gz", "imagesTs/SYN_009_0001.nii.gz"]})
    listed.write_text(json.dumps({"test": entries}))
    report = check_dataset("nnunet", root, subset="imagesTs", datalist=listed, labels=False)
    bad, absent = report.problems
    assert (bad.case, bad.file) == ("SYN_001", f"SYN_001_0001.nii.gz (in {listed})"), report.format()
    assert bad.message.startswith("unreadable or truncated file"), report.format()
    assert (absent.case, absent.message.split(";")[0]) == (
        "SYN_009",
        "none of its 2 files found (e.g. imagesTs/SYN_009_0000.nii.gz)",
    ), report.format()
    assert not check_dataset("nnunet", root, subset="imagesTs", datalist=listed).ok  # labelled: no 'label'


def test_unlabelled_check_of_cityscapes_covers_the_test_split(pristine, tmp_path, capsys):
    """``check --dataset cityscapes --unlabelled`` ignored labels but scanned 'train' and 'val' only,
    never 'test', the split without public labels (its gtFine files are dummies) that inference is
    for. Now it checks every split's frames as inference reads them, 'test' too: a frame of a test
    set alone (no gtFine at all) passes, a broken one fails by name."""
    root = tmp_path / "city"
    shutil.copytree(pristine["cityscapes"], root)
    (val,) = (root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png")
    test = root / "leftImg8bit" / "test" / "berlin" / "berlin_000000_000019_leftImg8bit.png"
    test.parent.mkdir(parents=True)
    shutil.copyfile(val, test)
    dummy = root / "gtFine" / "test" / "berlin" / "berlin_000000_000019_gtFine_labelIds.png"
    dummy.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(dummy)
    cli(["check", "--dataset", "cityscapes", "--root", str(root), "--unlabelled", "--quiet"])
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith("OK: cityscapes") and "5 cases, 0 with problems" in out, (
        out
    )
    assert (
        f"NOTE labels not checked: {root} (splits train, val, test) was checked as an unlabelled set" in out
    ), out
    # the test frames alone, without gtFine (leftImg8bit_trainvaltest.zip unpacked by itself)
    shutil.rmtree(root / "gtFine")
    for split in ("train", "val"):
        shutil.rmtree(root / "leftImg8bit" / split)
    report = check_dataset("cityscapes", root, labels=False)
    assert report.ok and [c.case for c in report.cases] == ["berlin_000000_000019"], report.format()
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(test)  # a label map given for the camera frame
    (problem,) = check_dataset("cityscapes", root, labels=False).problems
    assert (problem.case, problem.file) == ("berlin_000000_000019", test.name), problem
    assert problem.message.startswith("expected an RGB image, got shape (32, 64)"), problem


def test_a_fold_without_cases_is_named(brats, tmp_path):
    """A hand-made datalist with folds 0..2 and no 'n_folds' (so 5) passed the check, and the run on
    fold 2 was validated on fold 3: no case."""
    from pam_monai.data import build_datalist

    datalist = build_datalist("brats", brats)
    assert len(datalist["training"]) >= 3
    datalist.pop("n_folds", None)
    for n, entry in enumerate(datalist["training"]):
        entry["fold"] = n % 3
    path = tmp_path / "brats.json"
    path.write_text(json.dumps(datalist))
    report = check_dataset("brats", brats, datalist=path)  # the whole list: warned, its fold 0 runs
    assert not report.problems
    assert [str(w) for w in report.warnings if w.case == "n_folds"] == [
        f"n_folds: {path}: no 'n_folds' (so 5), but no training entry has fold 3, 4: the runs on folds 2, 3, 4 "
        "would be tested or validated on no case; set 'n_folds' to the number of folds the entries use, or "
        "rebuild the folds with python -m pam_monai datalist"
    ]
    # a run reads its own folds alone: fold 0's (test 0, validation 1) are there, fold 2's are not
    assert (
        messages(check_dataset("brats", brats, datalist=path, datalist_splits=["val", "test"], fold=0)) == []
    )
    assert len(messages(check_dataset("brats", brats, datalist=path, datalist_splits=["val"], fold=2))) == 1
    path.write_text(json.dumps({**datalist, "n_folds": 3}))  # a 3-fold list, as the datalist command writes
    report = check_dataset("brats", brats, datalist=path)
    assert not report.problems and not [w for w in report.warnings if w.case == "n_folds"]


def test_a_fold_without_cases_read_from_an_explicit_list_is_no_problem(brats, tmp_path):
    """A datalist's explicit 'test' list (an external test set) is what every fold is evaluated on,
    but the empty-fold check took the test split from the folds: the evaluation of fold 2 of a list
    with folds 0..1 and a 'test' list was refused ("tested or validated on no case") though its test
    set had a case. Its validation, fold 3, is still empty and named."""
    from pam_monai.data import build_datalist, get_split

    datalist = build_datalist("brats", brats)
    datalist.pop("n_folds", None)
    *folded, external = datalist["training"][:3]
    for n, entry in enumerate(folded):
        entry["fold"] = n % 2
    datalist.update(training=folded, test=[{k: v for k, v in external.items() if k != "fold"}])
    path = tmp_path / "brats.json"
    path.write_text(json.dumps(datalist))
    assert len(get_split("brats", datalist, "test", fold=2, root=brats)) == 1
    assert messages(check_dataset("brats", brats, datalist=path, datalist_splits=["test"], fold=2)) == []
    (problem,) = messages(check_dataset("brats", brats, datalist=path, datalist_splits=["val"], fold=2))
    assert "no training entry has fold 2, 3, 4: the run on fold 2 would be tested or validated" in problem
    report = check_dataset("brats", brats, datalist=path)  # the whole list: runs 1..3 validate on folds 2..4
    assert "the runs on folds 1, 2, 3 would be" in " ".join(str(w) for w in report.warnings)


def test_check_of_cityscapes_names_a_root_training_cannot_split(pristine, tmp_path, capsys):
    """``check`` said OK for a CityScapes root whose 'train' frames come from fewer than two cities
    (training holds one out for validation), where training then refused it. It now warns, and says
    what still runs: evaluation of the 'val' frames, or without them inference alone."""
    root = tmp_path / "city"
    shutil.copytree(pristine["cityscapes"], root)
    for split_root in ("leftImg8bit", "gtFine"):
        for city in ("bochum", "bremen"):
            shutil.rmtree(root / split_root / "train" / city)
    cli(["check", "--dataset", "cityscapes", "--root", str(root), "--quiet"])
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith("OK: cityscapes"), out
    assert (
        f"WARNING city: split: need 'train' frames of at least two cities under {root} to hold one out for "
        "validation, found ['aachen']"
    ) in out, out
    assert "training would refuse it; evaluation reads the 'val' frames alone" in out, out
    shutil.rmtree(root / "leftImg8bit" / "val")
    shutil.rmtree(root / "gtFine" / "val")
    cli(["check", "--dataset", "cityscapes", "--root", str(root), "--quiet"])
    out = capsys.readouterr().out
    assert "WARNING city: split: need 'train' frames of at least two cities" in out, out
    assert "training and evaluation would refuse it; inference segments every frame" in out, out
    for part in ("leftImg8bit", "gtFine"):  # a second train city: no warning
        shutil.copytree(pristine["cityscapes"] / part / "train" / "bochum", root / part / "train" / "bochum")
    cli(["check", "--dataset", "cityscapes", "--root", str(root), "--quiet"])
    assert "split:" not in capsys.readouterr().out


def test_a_cityscapes_frame_under_two_names_is_named_without_folds(pristine, tmp_path):
    """A frame copied under another name (into another city) was warned of as "the same voxels ...
    one scan under two case IDs? The cross-validation may test the model ...; keep both in one fold",
    though CityScapes' split is by city, without folds (``--fold`` other than 0 is refused). It now
    speaks of frames and pixels and of the city split."""
    root = tmp_path / "city"
    shutil.copytree(pristine["cityscapes"], root)
    (val,) = (root / "leftImg8bit" / "val" / "frankfurt").glob("*_leftImg8bit.png")
    copy = root / "leftImg8bit" / "train" / "aachen" / "aachen_000009_000019_leftImg8bit.png"
    shutil.copyfile(val, copy)
    (label,) = (root / "gtFine" / "val" / "frankfurt").glob("*_gtFine_labelIds.png")
    shutil.copyfile(label, root / "gtFine" / "train" / "aachen" / "aachen_000009_000019_gtFine_labelIds.png")
    report = check_dataset("cityscapes", root)
    (repeated,) = [str(w) for w in report.warnings if "the same" in w.message]
    assert repeated == (
        "frankfurt_000000_000019: image: the same pixels as aachen_000009_000019: one frame under two names? "
        "Cities of 'train' and 'val' may hold a copy of a frame the model trained on (or validated on) among "
        "those it is tested on; remove one"
    ), repeated
