"""Synthetic stand-ins: exact layouts, determinism, fading boundaries, ensure_dataset and the round trip
synth -> datalist -> check -> transforms (pam_monai.data.synthetic)."""

import hashlib
import json
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from pam_monai.cli import main as cli
from pam_monai.data import (
    DATASETS,
    SliceDataset,
    check_dataset,
    ensure_dataset,
    get_preprocess_transforms,
    get_split,
    random_flip_batch,
    synth,
)
from pam_monai.data.synthetic import BRATS_AFFINE, MARKER

SMALL = {
    "brats": {"cases": 2, "slices": 6},
    "isles": {"cases": 3, "max_slices": 3},
    "cityscapes": {"cases": 1, "size": (96, 48)},
}


def array_digest(root: Path) -> str:
    """Hash of every voxel/pixel array (and its path), not of the file bytes."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MARKER):
        h.update(str(path.relative_to(root)).encode())
        data = np.asanyarray(nib.load(path).dataobj) if ".nii" in path.name else np.asarray(Image.open(path))
        h.update(data.dtype.str.encode() + str(data.shape).encode() + data.tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", ["brats", "isles", "cityscapes"])
def test_deterministic_for_a_seed(name, tmp_path):
    a = array_digest(synth(name, tmp_path / "a", seed=3, **SMALL[name]))
    b = array_digest(synth(name, tmp_path / "b", seed=3, **SMALL[name]))
    c = array_digest(synth(name, tmp_path / "c", seed=4, **SMALL[name]))
    assert a == b != c


def test_brats_files_layout_and_headers(tmp_path):
    root = synth("brats", tmp_path, cases=2, slices=5, lgg_cases=1)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.nii.gz"))
    pattern = re.compile(r"^(HGG|LGG)/(Brats18_\w+_1)/\2_(flair|t1|t1ce|t2|seg)\.nii\.gz$")
    assert len(files) == 15 and all(pattern.match(f) for f in files)
    seg_dtypes = []
    for path in root.rglob("*.nii.gz"):
        img = nib.load(path)
        assert img.shape == (240, 240, 5)
        np.testing.assert_array_equal(img.affine, BRATS_AFFINE)
        assert img.header.get_zooms() == (1.0, 1.0, 1.0)
        if path.name.endswith("_seg.nii.gz"):
            seg_dtypes.append(img.get_data_dtype())
        else:
            assert img.get_data_dtype() == np.int16
    assert set(seg_dtypes) == {np.dtype(np.int16), np.dtype(np.uint8)}  # as BraTS ships them
    lgg = np.asanyarray(nib.load(next(root.glob("LGG/*/*_seg.nii.gz"))).dataobj)
    assert not (lgg == 4).any() and (lgg == 2).any()  # LGG: no enhancing tumour


def test_isles_files_layout(tmp_path):
    root = synth("isles", tmp_path, cases=1, max_slices=3)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    pattern = re.compile(r"^TRAINING/case_1/(SMIR\.Brain\.XX\.O\.(\w+)\.(\d+))/\1\.nii$")
    mods = sorted(pattern.match(f).group(2) for f in files)
    assert mods == sorted(["CT", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax", "CT_4DPWI", "OT"])
    pwi = nib.load(next(root.rglob("*CT_4DPWI*.nii")))
    ot = nib.load(next(root.rglob("*.OT.*.nii")))
    assert (
        pwi.ndim == 4 and pwi.shape[:3] == ot.shape and ot.shape[:2] == (256, 256) and 2 <= ot.shape[2] <= 3
    )


def test_cityscapes_files_layout(tmp_path):
    root = synth("cityscapes", tmp_path, cases=2, size=(64, 32), train_cities=2, val_cities=1)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    assert len(files) == 12
    for f in files:
        assert re.match(
            r"^(leftImg8bit|gtFine)/(train|val)/([a-z]+)/\3_\d{6}_000019_(leftImg8bit|gtFine_labelIds)\.png$",
            f,
        )
        assert f.startswith("leftImg8bit") == f.endswith("_leftImg8bit.png")
        assert Image.open(root / f).mode == ("RGB" if f.startswith("leftImg8bit") else "L")


def test_training_data_log_names_the_cityscapes_city_held_out(tmp_path, caplog):
    """Validation is one 'train' city chosen by the seed: the training log says which (it was only
    in the datalist), and an evaluation that reads the test split alone does not claim one."""
    from pam_monai.data.datalist import rank_cases
    from pam_monai.engines import prepare_data

    root = synth("cityscapes", tmp_path, cases=1, size=(64, 32), train_cities=3, val_cities=1)
    cities = sorted(p.name for p in (root / "leftImg8bit" / "train").iterdir())
    for seed in (0, 1):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pam_monai"):
            prepare_data("cityscapes", root, "", seed=seed, stand_in=False, check=False)
        held_out = rank_cases(cities, seed)[0]
        assert f"(validation: the held-out city {held_out})" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pam_monai"):
        prepare_data("cityscapes", root, "", splits=["test"], stand_in=False, check=False)
    assert "test cases from" in caplog.text and "held-out city" not in caplog.text


def test_brats_enhancing_tumour_fades_towards_its_outline(tmp_path):
    """The outer rim of the enhancing tumour hardly differs from the brain around it, its inner part
    does: the periphery a network misses."""
    root = synth("brats", tmp_path, cases=1, slices=24)
    case = next((root / "HGG").iterdir())
    seg = np.asanyarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
    t1ce = np.asanyarray(nib.load(case / f"{case.name}_t1ce.nii.gz").dataobj).astype(np.float32)
    et = seg == 4
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)  # neighbours within the axial slice
    outer = et & ndimage.binary_dilation(seg == 2, in_plane)  # enhancing voxels touching the oedema
    inner = et & ndimage.binary_dilation(seg == 1, in_plane)  # touching the necrotic core
    brain = (t1ce > 0) & (seg == 0)
    contrast_outer = t1ce[outer].mean() - t1ce[brain].mean()
    contrast_inner = t1ce[inner].mean() - t1ce[brain].mean()
    noise = t1ce[brain].std()
    assert contrast_inner > 2 * noise  # clearly visible
    assert contrast_outer < 0.5 * noise  # invisible under the noise
    assert outer.sum() > 0.1 * et.sum()  # a rim worth missing, not a few voxels


def test_cityscapes_vehicles_fade_into_the_road(tmp_path):
    root = synth("cityscapes", tmp_path, cases=3, size=(256, 128), train_cities=2)
    rims, cores = [], []
    for label_path in root.rglob("*_labelIds.png"):
        label = np.asarray(Image.open(label_path))
        image = np.asarray(
            Image.open(
                str(label_path)
                .replace("gtFine", "leftImg8bit", 1)
                .replace("_gtFine_labelIds", "_leftImg8bit")
            )
        ).astype(float)
        vehicle = (label >= 26) & (label <= 33)
        if vehicle.sum() < 200:
            continue
        road = image[label == 7].mean(axis=0)
        rim = vehicle & ~ndimage.binary_erosion(vehicle, iterations=2)
        core = ndimage.binary_erosion(vehicle, iterations=6)
        rims.append(np.abs(image[rim] - road).mean())
        cores.append(np.abs(image[core] - road).mean())
    assert rims and np.mean(rims) < 0.5 * np.mean(cores)


def test_ensure_dataset_generates_once_warns_and_keeps_real_data(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.WARNING)
    root, synthetic = ensure_dataset("brats", tmp_path / "data", cases=2, slices=4)
    assert synthetic and root == tmp_path / "data" / "synthetic_brats"
    assert "SYNTHETIC" in caplog.text
    assert json.loads((root / MARKER).read_text())["options"] == {"cases": 2, "slices": 4}
    assert len(list((root / "HGG").iterdir())) == 2
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no temp folder left

    def fail(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr("pam_monai.data.synthetic.synth", fail)
    caplog.clear()
    assert ensure_dataset("brats", tmp_path / "data", cases=2, slices=4) == (root, True)
    assert "SYNTHETIC" in caplog.text
    with pytest.raises(AssertionError, match="generated again"):  # other parameters: a new stand-in
        ensure_dataset("brats", tmp_path / "data", cases=3, slices=4)
    monkeypatch.undo()

    real = synth("brats", tmp_path / "real", cases=1, slices=4)  # "real" data: no marker
    assert ensure_dataset("brats", real) == (real, False)
    assert ensure_dataset("brats", root) == (root, True)  # pointing at a stand-in still says so


@pytest.mark.parametrize(
    "name, shape",
    [("brats", (4, 160, 160)), ("isles", (4, 224, 224)), ("cityscapes", (3, 128, 256))],
)
def test_round_trip_synth_datalist_check_transforms(name, shape, tmp_path, capsys):
    root, out = tmp_path / name, tmp_path / f"{name}.json"
    opts = {
        "brats": ["--cases", "5", "--slices", "6"],
        "isles": ["--cases", "4", "--max_slices", "2"],
        "cityscapes": ["--cases", "1", "--size", "(128,64)"],
    }[name]
    cli(["synth", "--dataset", name, "--output", str(root), *opts])
    assert ensure_dataset(name, root) == (root, True)  # marked: runs on it say SYNTHETIC
    cli(["datalist", "--dataset", name, "--root", str(root), "--output", str(out)])
    cli(["check", "--dataset", name, "--root", str(root)])  # exits 1 on a problem
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith(f"OK: {name}")
    assert check_dataset(name, root).ok

    train = get_split(name, out, "train", fold=0, root=root)
    test = get_split(name, out, "test", fold=0, root=root)
    assert train and test and not {e["case"] for e in train} & {e["case"] for e in test}
    ds = SliceDataset(train, name, progress=False)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    batch = random_flip_batch(next(iter(loader)), spatial_axis=DATASETS[name].flip_axis)
    assert tuple(batch["image"].shape[1:]) == shape and tuple(batch["label"].shape[1:]) == (1, *shape[1:])
    assert set(torch.unique(batch["label"]).tolist()) <= {0.0, 1.0}
    ref = get_preprocess_transforms(name)(dict(test[0]))
    assert tuple(ref["image"].shape[:3]) == shape
    assert set(torch.unique(torch.as_tensor(ref["label"])).tolist()) <= {0.0, 1.0}


def test_ensure_dataset_refuses_a_folder_in_another_layout(tmp_path):
    """Someone's own data (here a Decathlon-style folder) is an error naming the layout, never a
    silent synthetic stand-in; a missing or empty folder still gets the stand-in."""
    own = tmp_path / "own"
    (own / "imagesTr").mkdir(parents=True)
    (own / "imagesTr" / "case_0.nii.gz").write_bytes(b"")
    (own / "dataset.json").write_text("{}")
    with pytest.raises(
        ValueError, match=r"no complete case in the published isles layout.*\n.*TRAINING/case_<n>"
    ):
        ensure_dataset("isles", own, cases=2, max_slices=3)
    assert not (own / "synthetic_isles").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"")  # hidden files do not count
    assert ensure_dataset("isles", empty, cases=2, max_slices=3) == (empty / "synthetic_isles", True)


def test_own_data_read_as_brats_is_named_as_nnunet(tmp_path, capsys):
    """An nnU-Net raw data set given to a BRATS bundle or check (--task nnunet forgotten) is named as
    such, with the flags that read it, not only as imagesTr/labelsTr folders missing 'flair'."""
    own = synth("nnunet", tmp_path / "Dataset501_Lesion", cases=2)
    with pytest.raises(
        ValueError, match=r"looks like an nnU-Net raw data set.*--dataset nnunet.*--task nnunet"
    ):
        ensure_dataset("brats", own)
    report = check_dataset("brats", own)
    assert not report.ok and any("--task nnunet" in n for n in report.notes)
    with pytest.raises(SystemExit):
        cli(["check", "--dataset", "brats", "--root", str(own)])
    assert "NOTE " in capsys.readouterr().out
    assert check_dataset("nnunet", own).notes == []  # read as what it is: nothing to say


def test_synth_and_datalist_refuse_what_would_silently_go_wrong(tmp_path):
    """synth into a folder with data would replace its cases; fewer than 3 folds leave a split empty."""
    root = tmp_path / "brats"
    cli(["synth", "--dataset", "brats", "--output", str(root), "--cases", "3", "--slices", "4"])
    with pytest.raises(SystemExit, match="already holds files; choose an empty folder or pass --overwrite"):
        cli(["synth", "--dataset", "brats", "--output", str(root), "--cases", "1", "--slices", "2"])
    with pytest.raises(SystemExit, match="n_folds must be at least 3"):
        cli(
            [
                "datalist",
                "--dataset",
                "brats",
                "--root",
                str(root),
                "--output",
                str(tmp_path / "d.json"),
                "--n_folds",
                "2",
            ]
        )
    assert not (tmp_path / "d.json").exists()


def test_interrupted_synth_command_leaves_a_marked_set(tmp_path, monkeypatch):
    """`pam_monai synth` killed half-way must not leave cases that later pass for real data."""
    from pam_monai.data import commands

    out = tmp_path / "brats"
    real_save, calls = nib.save, [0]

    def flaky(img, path):
        calls[0] += 1
        if calls[0] > 12:  # a few cases written, then the run is interrupted
            raise KeyboardInterrupt("interrupted")
        real_save(img, path)

    monkeypatch.setattr(nib, "save", flaky)
    with pytest.raises(KeyboardInterrupt):
        commands.synth("brats", str(out), cases=3, slices=4)
    monkeypatch.undo()
    assert ensure_dataset("brats", out) == (out, True)
    commands.synth("brats", str(tmp_path / "whole"), cases=1, slices=4)
    assert json.loads((tmp_path / "whole" / MARKER).read_text())["source"] == "pam_monai synth"


def test_folders_renamed_into_place_get_the_usual_permissions(tmp_path):
    """A stand-in data set and an own-data bundle are written in a temporary folder and renamed:
    they get mkdir's permissions, not mkdtemp's 0700 (private to the writer on a shared machine)."""
    import os

    from pam_monai.bundle_templates.own_data import own_data_bundle
    from pam_monai.data import ensure_dataset

    umask = os.umask(0o022)
    os.umask(umask)
    root, _ = ensure_dataset("isles", tmp_path / "none", output=tmp_path / "standin", max_slices=2)
    own = synth("nnunet", tmp_path / "Dataset950_Perm", cases=3, slices=2)
    bundle = own_data_bundle(own, "fpa", tmp_path / "perm_fpa")
    for folder in (Path(root), bundle):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask, (folder, oct(folder.stat().st_mode))


def test_a_run_on_the_stand_in_warns_once(tmp_path, caplog):
    """A bundle run on the stand-in printed two WARNINGs that said the same thing (ensure_dataset's
    "generated a SYNTHETIC stand-in" and prepare_data's "using a SYNTHETIC stand-in"). One WARNING
    per run now, naming the empty folder and the stand-in and saying what its results are worth;
    a run that reuses the stand-in says the same, once."""
    from pam_monai.engines import prepare_data

    data, stand_in = tmp_path / "data", tmp_path / "synthetic_data"
    for _ in ("generated", "reused"):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            prepare_data("brats", data, "", synthetic_dir=stand_in, check=False)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert (
            "SYNTHETIC stand-in" in warnings[0] and str(data) in warnings[0] and str(stand_in) in warnings[0]
        )
        assert warnings[0].endswith("results say nothing about real data")


def _cut_short(*args, **kwargs):
    """nibabel's or PIL's save that writes the first bytes of its file, then fails."""
    Path(str(next(a for a in args if isinstance(a, (str, Path))))).write_bytes(b"\x00" * 10)
    raise OSError("stopped half-way")


@pytest.mark.parametrize(
    "dataset, options, save",
    [
        ("brats", SMALL["brats"], "nibabel.save"),
        ("nnunet", {"cases": 1, "two_d": True, "test_cases": 0}, "PIL.Image.Image.save"),
        ("cityscapes", SMALL["cityscapes"], "PIL.Image.Image.save"),
    ],
    ids=["nifti", "nnunet-png", "cityscapes-png"],
)
def test_synth_interrupted_leaves_no_cut_file(tmp_path, monkeypatch, dataset, options, save):
    """``synth`` wrote its images straight to their names: a run stopped half-way through a file
    (a kill, a full disk) left a cut image there, which the next command read as a case. Each file
    is now written beside its name and renamed into place: only complete files carry the names."""
    from pam_monai.data.commands import synth as synth_command

    monkeypatch.setattr(save, _cut_short)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="stopped half-way"):
        synth_command(dataset, str(out), seed=0, **options)
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [MARKER]


@pytest.mark.parametrize(
    "options",
    [{"two_d": True}, {"slices": 4}],
    ids=["png", "nifti"],  # two writers of dataset.json: _synth_nnunet_2d and synth_nnunet
)
def test_synth_dataset_json_is_written_whole(tmp_path, monkeypatch, options):
    """The nnU-Net layout's dataset.json, written last, is written atomically too: a run stopped
    while writing it leaves none, not a cut one that every reader would refuse as invalid JSON."""
    real = Path.write_text

    def cut(self, text, *args, **kwargs):
        if self.name.startswith("dataset.json") or ".dataset.json" in self.name:
            real(self, text[:10], *args, **kwargs)
            raise OSError("stopped half-way")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", cut)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="stopped half-way"):
        synth("nnunet", str(out), cases=1, test_cases=0, **options)
    assert not (out / "dataset.json").exists()
    assert not [p for p in out.rglob("*dataset.json*")]
