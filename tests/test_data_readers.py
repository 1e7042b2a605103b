"""Readers of the published layouts, datalists and splits (pam_monai.data.{brats,isles,cityscapes,datalist})."""

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from monai.data import load_decathlon_datalist

from pam_monai.cli import main as cli
from pam_monai.data import (
    build_datalist,
    discover_cases,
    get_split,
    load_datalist,
    scan_cases,
    synth,
    write_datalist,
)
from pam_monai.data.brats import read_case_ids
from pam_monai.data.datalist import rank_cases, split_cases
from pam_monai.data.layout import Problem

REPO = Path(__file__).parents[1]
CANONICAL = REPO / "data_lists" / "brats2018_hgg_5fold.json"


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory):
    return synth("brats", tmp_path_factory.mktemp("brats"), cases=3, slices=4, lgg_cases=1)


@pytest.fixture(scope="module")
def isles_root(tmp_path_factory):
    return synth("isles", tmp_path_factory.mktemp("isles"), cases=4, max_slices=2)


@pytest.fixture(scope="module")
def city_root(tmp_path_factory):
    return synth("cityscapes", tmp_path_factory.mktemp("city"), cases=2, size=(64, 32))


def test_a_problem_names_its_case_and_file_once_each():
    """A stray file is its own case (notes.txt among the images): named once, not "notes.txt:
    notes.txt: ..."; a case's file keeps both names."""
    assert (
        str(Problem("notes.txt", "notes.txt", "not an image file name"))
        == "notes.txt: not an image file name"
    )
    assert str(Problem("SYN_001", "SYN_001_0000.nii.gz", "all voxels are zero")) == (
        "SYN_001: SYN_001_0000.nii.gz: all voxels are zero"
    )


def test_brats_reader_hgg_only_by_default_in_channel_order(brats_root):
    items = discover_cases("brats", brats_root)
    assert [it["case"] for it in items] == ["Brats18_SYN_001_1", "Brats18_SYN_002_1", "Brats18_SYN_003_1"]
    for it in items:
        assert [Path(p).name for p in it["image"]] == [
            f"{it['case']}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")
        ]
        assert Path(it["label"]).name == f"{it['case']}_seg.nii.gz"
        assert all(Path(p).is_file() for p in [*it["image"], it["label"]])
    both = discover_cases("brats", brats_root, grades="HGG,LGG")
    assert len(both) == 4 and both[-1]["case"] == "Brats18_SYNL_001_1"


def test_brats_reader_names_a_single_case_folder_given_as_the_root(brats_root):
    from pam_monai.data.brats import scan

    folder = next(p for p in sorted(brats_root.rglob("Brats18_*")) if p.is_dir())
    problems = scan(folder).problems
    assert (
        len(problems) == 1
        and f"{folder} is one case's folder: point at the folder that holds" in problems[0].message
    )


def test_isles_reader_names_a_single_case_folder_given_as_the_root(tmp_path):
    """``--input_dir .../case_7`` (one case, as a recipient of a bundle may point inference at it) said
    only "no case_<n> folders"; as for BraTS, the message names the folder to point at instead."""
    from pam_monai.data.isles import scan

    folder = synth("isles", tmp_path / "isles", cases=1, max_slices=2) / "TRAINING" / "case_1"
    problems = scan(folder).problems
    assert (
        len(problems) == 1
        and f"{folder} is one case's folder: point at the folder that holds the case folders ({folder.parent})"
        in problems[0].message
    ), problems


def test_isles_root_with_only_testing_says_training_needs_training(tmp_path):
    """A root holding ISLES 2018's TESTING/ alone (no OT labels) said only "no case_<n> folders
    (expected <root>/TRAINING/...)", though the case folders are there; now it says what TESTING/ is
    for and what training needs."""
    from pam_monai.data.isles import scan

    root = synth("isles", tmp_path / "isles", cases=1, max_slices=2)
    (root / "TRAINING").rename(root / "TESTING")
    (problem,) = scan(root).problems
    assert problem.message.endswith(
        f"; {root / 'TESTING'} holds the challenge's test cases, without OT labels: training and evaluation "
        f"need the TRAINING/ folder beside it; check reads TESTING/ as an unlabelled set and inference segments "
        f"it (--input_dir {root})"
    ), problem.message


def test_cityscapes_root_with_only_test_frames_says_how_to_check_them(tmp_path):
    """A root holding CityScapes' test frames alone (no public labels) said only "no frames of
    split(s) train, val", though frames are there; now it says what they are for: check reads them
    with --unlabelled, inference segments them, training and evaluation need train and val."""
    from pam_monai.data.cityscapes import scan

    root = synth("cityscapes", tmp_path / "city", cases=1, size=(16, 8), train_cities=2)
    shutil.rmtree(root / "gtFine")
    shutil.rmtree(root / "leftImg8bit" / "train")
    (root / "leftImg8bit" / "val").rename(root / "leftImg8bit" / "test")
    (problem,) = scan(root).problems
    assert problem.message.endswith(
        f"; {root / 'leftImg8bit' / 'test'} holds the test frames, without public labels: training and evaluation "
        f"need the train and val splits; check reads the test frames with --unlabelled and inference segments "
        f"them (--input_dir {root})"
    ), problem.message


def test_cityscapes_missing_labelids_say_where_and_what_is_there_instead(tmp_path):
    """A frame without its labelIds said only "missing label 'labelIds'", the same whether the whole
    gtFine download was missing, one city folder of it, or the frame had a gtFine_color or
    labelTrainIds file in the labelIds' place (which cannot stand in: a colour drawing, or train ids
    without caravan and trailer). Each now says which, and what to do."""
    from pam_monai.data.cityscapes import scan

    def message(root, frame):
        (problem,) = [p for p in scan(root).problems if p.case == frame]
        # read as a label problem: an unlabelled set (inference, check --unlabelled) skips it
        assert problem.message.startswith("missing label 'labelIds'")
        return problem.message

    root = synth("cityscapes", tmp_path / "city", cases=1, size=(16, 8), train_cities=2)
    gt = root / "gtFine" / "train"
    label = gt / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    label.rename(label.with_name("aachen_000000_000019_gtFine_color.png"))
    assert "aachen_000000_000019_gtFine_color.png is there: a colour drawing of the labels" in message(
        root, "aachen_000000_000019"
    )
    label.with_name("aachen_000000_000019_gtFine_color.png").rename(
        label.with_name("aachen_000000_000019_gtFine_labelTrainIds.png")
    )
    assert "aachen_000000_000019_gtFine_labelTrainIds.png is there: train ids" in message(
        root, "aachen_000000_000019"
    )
    shutil.rmtree(gt / "bochum")
    assert "no folder gtFine/train/bochum for leftImg8bit/train/bochum" in message(
        root, "bochum_000000_000019"
    )
    shutil.rmtree(root / "gtFine")
    assert f"no gtFine folder in {root}: unpack gtFine_trainvaltest.zip there" in message(
        root, "frankfurt_000000_000019"
    )


def test_cityscapes_root_one_level_off_names_the_root_to_give(tmp_path):
    """The root given one level too deep (its leftImg8bit folder) or above the two zips unpacked each
    into a folder of its own (leftImg8bit_trainvaltest/leftImg8bit, as some unzip tools do) said only
    "no frames of split(s) train, val": it now names the folder to give, or the folders to move."""
    from pam_monai.data.cityscapes import scan

    root = synth("cityscapes", tmp_path / "city", cases=1, size=(16, 8), train_cities=2)
    for sub in ("leftImg8bit", "gtFine"):
        (problem,) = scan(root / sub).problems
        assert problem.message.endswith(
            f"; {root / sub} is the {sub} folder of a CityScapes root: give the folder that holds it, {root}"
        ), problem.message
    nested = tmp_path / "downloads"
    for sub in ("leftImg8bit", "gtFine"):
        (nested / f"{sub}_trainvaltest").mkdir(parents=True)
        shutil.move(root / sub, nested / f"{sub}_trainvaltest" / sub)
    (problem,) = scan(nested).problems
    assert problem.message.endswith(
        f"; each zip was unpacked into a folder of its own ({nested / 'gtFine_trainvaltest' / 'gtFine'}, "
        f"{nested / 'leftImg8bit_trainvaltest' / 'leftImg8bit'}): move them into one folder and give that folder "
        "(leftImg8bit and gtFine side by side in it)"
    ), problem.message


def test_brats_reader_accepts_a_flat_root_and_plain_nii(brats_root, tmp_path):
    import nibabel as nib

    flat = tmp_path / "flat"
    shutil.copytree(brats_root / "HGG" / "Brats18_SYN_001_1", flat / "Brats18_SYN_001_1")
    t2 = flat / "Brats18_SYN_001_1" / "Brats18_SYN_001_1_t2.nii.gz"
    nib.save(nib.load(t2), str(t2.with_name("Brats18_SYN_001_1_t2.nii")))
    t2.unlink()
    (flat / "notes").mkdir()  # a folder without NIfTI files is not a case
    (flat / "notes" / "readme.txt").write_text("x")
    items = discover_cases("brats", flat, relative=True)
    assert len(items) == 1
    assert items[0]["image"][3] == "Brats18_SYN_001_1/Brats18_SYN_001_1_t2.nii"


def test_isles_reader_layout_channel_order_and_nii_gz(isles_root, tmp_path):
    items = discover_cases("isles", isles_root)
    assert [it["case"] for it in items] == ["case_1", "case_2", "case_3", "case_4"]
    for it in items:
        mods = [Path(p).parent.name.split(".")[4] for p in it["image"]]
        assert mods == ["CT_CBF", "CT_MTT", "CT_CBV", "CT_Tmax"]  # the paper's CBF, MTT, CBV, TMAX
        assert Path(it["label"]).name.startswith("SMIR.Brain.XX.O.OT.") and it["label"].endswith(".nii")
    gz = synth("isles", tmp_path / "gz", cases=1, max_slices=2, compress=True)
    (item,) = discover_cases("isles", gz)
    assert all(p.endswith(".nii.gz") for p in [*item["image"], item["label"]])


def test_cityscapes_reader_pairs_images_and_labels(city_root):
    result = scan_cases("cityscapes", city_root)
    assert not result.problems
    assert Counter(c.group for c in result.cases) == {"train": 6, "val": 2}
    for c in result.cases:
        assert c.channels["leftImg8bit"].name == f"{c.case}_leftImg8bit.png"
        assert c.label.name == f"{c.case}_gtFine_labelIds.png"
        assert c.label.parent.parts[-3:] == ("gtFine", c.group, c.meta["city"])


def test_brats_folds_are_deterministic_balanced_and_case_wise(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text(
        "# comment\n" + "".join(f"HGG Brats18_X_{i}_1\n" for i in range(23)) + "LGG Brats18_Y_1_1\n"
    )
    a = build_datalist("brats", case_ids=ids)
    b = build_datalist("brats", case_ids=ids)
    assert a == b
    assert len(a["training"]) == 23  # HGG only
    assert sorted(Counter(e["fold"] for e in a["training"]).values()) == [4, 4, 5, 5, 5]
    other = build_datalist("brats", case_ids=ids, seed=1)
    assert [e["fold"] for e in other["training"]] != [e["fold"] for e in a["training"]]
    for fold in range(5):
        test, val, train = (get_split("brats", a, s, fold=fold) for s in ("test", "val", "train"))
        assert {e["fold"] for e in test} == {fold} and {e["fold"] for e in val} == {(fold + 1) % 5}
        cases = [e["case"] for e in test + val + train]
        assert sorted(cases) == sorted(e["case"] for e in a["training"])  # disjoint and complete


def test_a_brats_split_of_your_own_is_used_as_written():
    """A hand-written BraTS datalist (image and label only, no 'fold') with a 'validation' list is
    one fixed split, as written; it was refused: "datalist entries need a 'fold' field"."""

    def entry(case):
        return {
            "image": [f"HGG/{case}/{case}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")],
            "label": f"HGG/{case}/{case}_seg.nii.gz",
        }

    mine = {"training": [entry("Brats18_B_1"), entry("Brats18_A_1")], "validation": [entry("Brats18_C_1")]}
    assert [e["case"] for e in get_split("brats", mine, "train")] == ["Brats18_B_1", "Brats18_A_1"]
    assert [e["case"] for e in get_split("brats", mine, "val")] == ["Brats18_C_1"]
    with pytest.raises(
        ValueError, match=r"brats: fold 2: datalist gives one fixed split of its own .*pass --fold 0"
    ):
        get_split("brats", mine, "train", fold=2)


def test_brats_datalist_from_disk_matches_the_one_from_ids(brats_root, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"HGG Brats18_SYN_00{i}_1\n" for i in (1, 2, 3)))
    from_disk = build_datalist("brats", brats_root)
    from_ids = build_datalist("brats", case_ids=ids)
    assert from_disk["training"] == from_ids["training"]  # same relative paths, same folds


def test_written_datalist_loads_with_monai(brats_root, isles_root, city_root, tmp_path):
    for name, root in (("brats", brats_root), ("isles", isles_root), ("cityscapes", city_root)):
        path = write_datalist(build_datalist(name, root), tmp_path / f"{name}.json")
        for key in ("training", "validation", "test"):
            if key not in json.loads(path.read_text()):
                continue
            entries = load_decathlon_datalist(path, data_list_key=key, base_dir=root)
            ours = load_datalist(path, root=root)[key]
            assert [e["image"] for e in entries] == [e["image"] for e in ours]
            for e in entries:
                files = e["image"] if isinstance(e["image"], list) else [e["image"]]
                assert all(Path(f).is_file() for f in [*files, e["label"]])


def test_isles_split_fractions():
    cases = [f"case_{i}" for i in range(1, 95)]  # ISLES 2018 has 94 training cases
    parts = split_cases(cases, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"training": 66, "validation": 9, "test": 19}
    assert sorted(sum(parts.values(), [])) == sorted(cases)
    assert split_cases(cases, seed=0) == parts and split_cases(cases, seed=1) != parts


def test_isles_datalist_split(isles_root):
    d = build_datalist("isles", isles_root)
    assert [len(d[k]) for k in ("training", "validation", "test")] == [2, 1, 1]
    assert get_split("isles", d, "val") == d["validation"]
    absolute = get_split("isles", d, "test", root=isles_root)
    assert Path(absolute[0]["image"][0]).is_file()
    # one fixed split: another fold would silently be the same split (five "folds" = five runs on it)
    with pytest.raises(ValueError, match=r"isles: fold 3: this data set has one fixed split .*--data_seed"):
        get_split("isles", d, "train", fold=3)


def test_cityscapes_datalist_holds_out_one_train_city(city_root):
    d = build_datalist("cityscapes", city_root)
    held = d["val_city"]
    assert held == rank_cases(["aachen", "bochum", "bremen"], 0)[0]
    assert {e["city"] for e in d["validation"]} == {held}
    assert held not in {e["city"] for e in d["training"]} and len(d["training"]) == 4
    assert {e["city"] for e in d["test"]} == {"frankfurt"}
    assert all(isinstance(e["image"], str) and e["image"].startswith("leftImg8bit/") for e in d["training"])
    fixed = build_datalist("cityscapes", city_root, val_city="bochum")
    assert {e["city"] for e in fixed["validation"]} == {"bochum"}


def test_incomplete_cases_stop_the_datalist(brats_root, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(brats_root, root)
    (root / "HGG" / "Brats18_SYN_002_1" / "Brats18_SYN_002_1_t1.nii.gz").unlink()
    with pytest.raises(ValueError, match="Brats18_SYN_002_1_t1.nii.gz: missing modality 't1'"):
        build_datalist("brats", root)
    d = build_datalist("brats", root, skip_incomplete=True)
    assert [e["case"] for e in d["training"]] == ["Brats18_SYN_001_1", "Brats18_SYN_003_1"]


def test_the_datalist_command_names_the_incomplete_cases_it_leaves_out(brats_root, tmp_path, capsys):
    """`datalist` refusing incomplete cases did not name --skip_incomplete, and with it the case was
    left out of every split without a word (nor a trace in the JSON). The refusal now names the flag,
    and the left-out cases are printed and recorded in the datalist (`left_out_incomplete`)."""
    root = tmp_path / "b"
    shutil.copytree(brats_root, root)
    (root / "HGG" / "Brats18_SYN_002_1" / "Brats18_SYN_002_1_t1.nii.gz").unlink()
    out = tmp_path / "brats.json"
    with pytest.raises(SystemExit) as exit_:
        cli(["datalist", "--dataset", "brats", "--root", str(root), "--output", str(out)])
    assert "--skip_incomplete true" in str(exit_.value.code)
    cli(
        [
            "datalist",
            "--dataset",
            "brats",
            "--root",
            str(root),
            "--output",
            str(out),
            "--skip_incomplete",
            "true",
        ]
    )
    assert "left out 1 incomplete case(s) (--skip_incomplete): Brats18_SYN_002_1" in capsys.readouterr().out
    assert json.loads(out.read_text())["left_out_incomplete"] == ["Brats18_SYN_002_1"]
    assert "left_out_incomplete" not in build_datalist("brats", brats_root)  # only when a case is left out


def test_datalist_command(city_root, tmp_path, capsys):
    out = tmp_path / "lists" / "city.json"
    cli(["datalist", "--dataset", "cityscapes", "--root", str(city_root), "--output", str(out)])
    assert "training 4, validation 2, test 2" in capsys.readouterr().out
    assert json.loads(out.read_text())["dataset"] == "cityscapes"


def test_canonical_brats_list_is_what_the_command_makes(tmp_path):
    d = json.loads(CANONICAL.read_text())
    entries = d["training"]
    assert len(entries) == 210 and len({e["case"] for e in entries}) == 210
    assert sorted(Counter(e["fold"] for e in entries).values()) == [42] * 5
    for e in entries:
        c = e["case"]
        assert e["image"] == [f"HGG/{c}/{c}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")]
        assert e["label"] == f"HGG/{c}/{c}_seg.nii.gz"
    ids_file = REPO.parent / "shared" / "data" / "brats2018_training_case_ids.txt"
    if not ids_file.is_file():
        pytest.skip("case ID list not found in ../shared/data")
    assert sorted(e["case"] for e in entries) == sorted(read_case_ids(ids_file))
    out = tmp_path / "again.json"
    cli(["datalist", "--dataset", "brats", "--case_ids", str(ids_file), "--output", str(out)])
    assert json.loads(out.read_text()) == d


def test_write_datalist_leaves_no_temporary_file_and_uses_a_unique_one(tmp_path, monkeypatch):
    """A failed rename leaves nothing behind; two writers (torchrun ranks) never share a temporary file."""
    import os

    from pam_monai.bench.report import write_json

    for write in (write_datalist, write_json):
        target = tmp_path / f"{write.__name__}.json"
        write({"a": 1}, target)
        seen = []

        def failing_replace(src, dst, seen=seen):
            seen.append(os.path.basename(src))
            raise OSError("rename failed")

        monkeypatch.setattr(os, "replace", failing_replace)
        with pytest.raises(OSError, match="rename failed"):
            write({"a": 2}, target)
        monkeypatch.undo()
        assert json.loads(target.read_text()) == {"a": 1}
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
        assert seen and seen[0] != f".{target.name}.tmp"  # not a fixed name shared by every writer


def test_isles22_bids_layout_converts_and_refuses_by_file(tmp_path):
    """ISLES 2022 in its BIDS layout (rawdata/ + derivatives/): cases with a mask train, one without
    goes to imagesTs; a missing ADC and an ADC on another grid are named by case and file."""
    import json

    import nibabel as nib
    import numpy as np

    from pam_monai.data.isles22 import convert_isles22

    def save(path, shape=(8, 9, 5), affine=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (np.arange(np.prod(shape)).reshape(shape) % 3).astype(np.float32)
        nib.save(
            nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), str(path)
        )

    root = tmp_path / "ISLES-2022"
    for n in (1, 2, 3):
        case = f"sub-strokecase{n:04d}"
        save(root / "rawdata" / case / "ses-0001" / "dwi" / f"{case}_ses-0001_dwi.nii.gz")
        save(root / "rawdata" / case / "ses-0001" / "dwi" / f"{case}_ses-0001_adc.nii.gz")
        save(
            root / "rawdata" / case / "ses-0001" / "anat" / f"{case}_ses-0001_FLAIR.nii.gz", shape=(20, 20, 3)
        )
        if n < 3:
            save(root / "derivatives" / case / "ses-0001" / f"{case}_ses-0001_msk.nii.gz")
    out = convert_isles22(root, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        f"sub-strokecase000{n}_000{c}.nii.gz" for n in (1, 2) for c in (0, 1)
    ]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == [
        "sub-strokecase0003_0000.nii.gz",
        "sub-strokecase0003_0001.nii.gz",
    ]
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2
    with pytest.raises(FileExistsError, match="already exists"):
        convert_isles22(root, out, progress=False)

    adc = (
        root
        / "rawdata"
        / "sub-strokecase0002"
        / "ses-0001"
        / "dwi"
        / "sub-strokecase0002_ses-0001_adc.nii.gz"
    )
    save(adc, shape=(8, 9, 6))
    with pytest.raises(
        ValueError,
        match=r"sub-strokecase0002_ses-0001_adc.nii.gz: its shape \(8, 9, 6\) differs from the DWI's \(8, 9, 5\)",
    ):
        convert_isles22(root, tmp_path / "out2", progress=False)
    adc.unlink()
    with pytest.raises(
        ValueError,
        match=r"add the missing file, or move the case out of the folder\):\nsub-strokecase0002: no adc file",
    ):
        convert_isles22(root, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists() and [p.name for p in tmp_path.iterdir()] != []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out2")]  # no half-written folder


def test_get_split_names_an_n_folds_that_is_not_a_number():
    """The experiment runner reads splits without the check: it stopped at a bare int() error."""
    with pytest.raises(ValueError, match=r"brats: datalist's 'n_folds' 'five' is not a whole number"):
        get_split("brats", {"n_folds": "five", "training": []}, "test")


def test_too_many_open_files_is_not_called_a_broken_file(tmp_path):
    """Out of file descriptors, every read failed as 'unreadable or truncated file': sound data
    looked broken (check listed every case). Such a limit of the process is an OSError saying so."""
    resource = pytest.importorskip("resource")
    import nibabel as nib
    import numpy as np

    from pam_monai.data.files import UnreadableFile, load_nifti

    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), path)
    free = os.dup(0)  # the lowest free descriptor: with the limit there, no file opens
    os.close(free)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (free, hard))
    try:
        with pytest.raises(OSError, match="not a fault of the file.*ulimit -n") as e:
            load_nifti(path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not isinstance(e.value, UnreadableFile)


def test_the_datalist_command_warns_of_folds_without_cases(brats_root, tmp_path, capsys):
    """`datalist` on 4 cases wrote a 5-fold list whose fold 4 held no case, silently; `check
    --datalist` then warned and said to rebuild it with `datalist`, which wrote the same. The command
    now warns and names the --n_folds that fits."""
    root = tmp_path / "b"
    shutil.copytree(brats_root, root)
    shutil.copytree(root / "HGG" / "Brats18_SYN_001_1", root / "HGG" / "Brats18_SYN_009_1")
    for f in (root / "HGG" / "Brats18_SYN_009_1").iterdir():
        f.rename(f.with_name(f.name.replace("_001_", "_009_")))
    out = tmp_path / "brats.json"
    cli(["datalist", "--dataset", "brats", "--root", str(root), "--output", str(out)])
    assert "WARNING: 4 case(s) for 5 folds: fold(s) 4 hold no case" in capsys.readouterr().out
    cli(["datalist", "--dataset", "brats", "--root", str(root), "--output", str(out), "--n_folds", "4"])
    assert "WARNING" not in capsys.readouterr().out
