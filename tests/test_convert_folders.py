"""Plain folders of images and labels into the nnU-Net v2 raw layout (python -m pam_monai convert_folders)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pam_monai.cli import main
from pam_monai.data import check_dataset, get_spec
from pam_monai.data.datalist import build_datalist, entry_case
from pam_monai.data.folders import convert_folders

AFFINE = np.diag([0.9, 0.9, 2.5, 1.0])


def volume(path: Path, data: np.ndarray, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def label_map(values=(1,), shape=(20, 18, 4)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    for i, v in enumerate(values):
        lab[4 + 3 * i : 7 + 3 * i, 5:10, 1:3] = v
    return lab


def plain(
    root: Path, cases=("a01", "b02", "c03"), image="{}", label="{}_seg", channels=0, values=(1,)
) -> Path:
    """images/<image> and labels/<label> NIfTI files; ``channels`` > 0 writes 4-D images."""
    rng = np.random.default_rng(0)
    for case in cases:
        shape = (20, 18, 4) + ((channels,) if channels else ())
        volume(root / "images" / f"{image.format(case)}.nii.gz", rng.normal(size=shape).astype(np.float32))
        volume(root / "labels" / f"{label.format(case)}.nii.gz", label_map(values))
    return root


def test_pairs_by_case_name_stripping_the_label_suffix_and_check_passes(tmp_path):
    src = plain(tmp_path, values=(1, 3))
    out = convert_folders(src / "images", tmp_path / "Dataset501", src / "labels", progress=False)
    for case in ("a01", "b02", "c03"):  # copied as shipped: no re-encoding
        assert (out / "imagesTr" / f"{case}_0000.nii.gz").read_bytes() == (
            src / "images" / f"{case}.nii.gz"
        ).read_bytes()
        assert (out / "labelsTr" / f"{case}.nii.gz").read_bytes() == (
            src / "labels" / f"{case}_seg.nii.gz"
        ).read_bytes()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "image"}
    assert meta["labels"] == {"background": 0, "label_1": 1, "label_3": 3}  # the values found
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    report = check_dataset("nnunet", out, progress=False)
    assert report.ok, report.format()


def test_4d_images_are_split_into_channels_with_given_names(tmp_path):
    src = plain(tmp_path, image="{}_img", label="{}_label", channels=2)
    out = convert_folders(
        src / "images",
        tmp_path / "out",
        src / "labels",
        channel_names=["T1", "T2"],
        label_names={1: "lesion"},
        progress=False,
    )
    data = np.asarray(nib.load(str(src / "images" / "b02_img.nii.gz")).dataobj)
    for c in range(2):
        channel = nib.load(str(out / "imagesTr" / f"b02_{c:04d}.nii.gz"))
        assert np.array_equal(np.asarray(channel.dataobj), data[..., c])
        assert np.allclose(channel.affine, AFFINE)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T2"}
    assert meta["labels"] == {"background": 0, "lesion": 1}
    spec = get_spec("nnunet", root=out)
    assert spec.channels == ("T1", "T2")
    assert check_dataset("nnunet", out, progress=False).ok


def test_one_folder_of_img_and_seg_pairs(tmp_path):
    folder = tmp_path / "cases"
    for case in ("x1", "x2"):
        volume(folder / f"{case}_img.nii.gz", np.ones((20, 18, 4), np.float32))
        volume(folder / f"{case}_seg.nii.gz", label_map())
    out = convert_folders(folder, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["x1_0000.nii.gz", "x2_0000.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["x1.nii.gz", "x2.nii.gz"]


def test_images_without_labels_and_labels_without_images_are_listed(tmp_path):
    src = plain(tmp_path, cases=("a01", "b02", "c03"))
    (src / "labels" / "c03_seg.nii.gz").unlink()
    volume(src / "labels" / "z09_seg.nii.gz", label_map())
    # no image suffix found: "without a suffix", not the suffix 'a suffix'
    with pytest.raises(
        ValueError,
        match=r"label\(s\) without an image: z09_seg.nii.gz \(paired by case name, images without a suffix, ",
    ):
        convert_folders(src / "images", tmp_path / "out", src / "labels", progress=False)
    (src / "labels" / "z09_seg.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"image\(s\) without a label: c03.nii.gz .*--test_images true"):
        convert_folders(src / "images", tmp_path / "out", src / "labels", progress=False)
    assert not (tmp_path / "out").exists()
    out = convert_folders(src / "images", tmp_path / "out", src / "labels", test_images=True, progress=False)
    assert [p.name for p in (out / "imagesTs").iterdir()] == ["c03_0000.nii.gz"]
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2


def test_case_names_the_layout_cannot_hold_are_refused_by_name(tmp_path):
    src = plain(tmp_path, cases=("ok", "pat 1"))
    with pytest.raises(ValueError, match=r"case name\(s\) with spaces: 'pat 1'"):
        convert_folders(src / "images", tmp_path / "out", src / "labels", progress=False)
    assert not (tmp_path / "out").exists()


def test_case_names_ending_in_four_digits_convert_check_and_list(tmp_path):
    """scan_2020 was refused as a channel number, but nnU-Net takes the last _XXXX of
    scan_2020_0000.nii.gz as the channel, and so do the checker and the datalist (next to a case scan)."""
    cases = ("scan", "scan_2020", "pat_0001")
    src = plain(tmp_path, cases=cases)
    out = convert_folders(src / "images", tmp_path / "Dataset501", src / "labels", progress=False)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in sorted(cases)]
    report = check_dataset("nnunet", out, progress=False)
    assert report.ok and sorted(c.case for c in report.cases) == sorted(cases), report.format()
    entries = build_datalist("nnunet", out)["training"]
    assert sorted(entry_case("nnunet", e) for e in entries) == sorted(cases)


def test_nnunet_files_given_as_plain_folders_are_named_as_such(tmp_path):
    """imagesTr/<case>_XXXX and labelsTr/<case> given to the converter: the layout is there already."""
    src = plain(tmp_path, cases=("a01", "b02"), image="{}_0000", label="{}")
    message = r"the images are nnU-Net's <case>_XXXX files of these cases already \(a01_0000.nii.gz of a01\)"
    with pytest.raises(ValueError, match=r"label\(s\) without an image: a01.nii.gz, b02.nii.gz .*" + message):
        convert_folders(src / "images", tmp_path / "out", src / "labels", progress=False)


def test_refusals_leave_no_output(tmp_path):
    src = plain(tmp_path)
    volume(src / "labels" / "b02_seg.nii.gz", label_map(shape=(20, 18, 5)))  # off its image's grid
    with pytest.raises(ValueError, match=r"b02_seg.nii.gz: shape \(20, 18, 5\) differs"):
        convert_folders(src / "images", tmp_path / "out", src / "labels", progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(FileExistsError, match="full already exists"):
        convert_folders(src / "images", tmp_path / "full", src / "labels", progress=False)


def test_colour_pngs(tmp_path):
    from PIL import Image

    for case in ("p1", "p2"):
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "gt").mkdir(exist_ok=True)
        Image.fromarray(np.full((24, 32, 3), 90, np.uint8), "RGB").save(tmp_path / "img" / f"{case}.png")
        mask = np.zeros((24, 32), np.uint8)
        mask[5:10, 5:10] = 1
        Image.fromarray(mask, "L").save(tmp_path / "gt" / f"{case}_mask.png")
    out = convert_folders(tmp_path / "img", tmp_path / "out", tmp_path / "gt", progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"} and meta["file_ending"] == ".png"
    assert (out / "imagesTr" / "p1_0000.png").read_bytes() == (tmp_path / "img" / "p1.png").read_bytes()
    assert check_dataset("nnunet", out, progress=False).ok


def test_plain_folders_given_as_a_data_set_name_the_converter(tmp_path, capsys):
    src = plain(tmp_path / "mine")
    for argv in (["check", "--root", str(src)], ["check", "--dataset", "nnunet", "--root", str(src)]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert (
            f"{src} holds images/ and labels/ (one file per case): convert them once, python -m pam_monai "
            f"convert_folders --images {src / 'images'} --labels {src / 'labels'} --output NEW, and use NEW"
        ) in str(exit_.value.code)
    with pytest.raises(FileNotFoundError, match=r"holds images/ and labels/ .*convert_folders"):
        get_spec("nnunet", root=src)
    main(
        [
            "convert_folders",
            "--images",
            str(src / "images"),
            "--labels",
            str(src / "labels"),
            "--output",
            str(tmp_path / "new"),
            "--label_names",
            "lesion",
        ]
    )
    assert (
        "3 training cases, channels image, labels {'background': 0, 'lesion': 1}" in capsys.readouterr().out
    )
    assert check_dataset("nnunet", tmp_path / "new", progress=False).ok


def test_one_folder_of_pairs_given_as_a_data_set_names_the_converter(tmp_path):
    for case in ("x1", "x2"):
        volume(tmp_path / "cases" / f"{case}_img.nii.gz", np.ones((20, 18, 4), np.float32))
        volume(tmp_path / "cases" / f"{case}_seg.nii.gz", label_map())
    with pytest.raises(
        FileNotFoundError, match=r"side by side: .*convert_folders --images \S*cases --output NEW"
    ):
        get_spec("nnunet", root=tmp_path / "cases")


def brats_case(folder: Path, case: str) -> None:
    for name in ("flair", "t1", "t1ce", "t2"):
        volume(folder / f"{case}_{name}.nii.gz", np.ones((20, 18, 4), np.float32))
    volume(folder / f"{case}_seg.nii.gz", label_map())


def test_a_brats_case_folder_given_as_own_data_names_the_brats_reader(tmp_path):
    """X_flair, X_t1, X_t1ce, X_t2 and X_seg side by side looked like images and labels: the note
    said convert_folders, which then refused X_seg as a label without an image."""
    case = tmp_path / "cases" / "Brats18_X"
    brats_case(case, "Brats18_X")
    advice = f"{case} is one BraTS case's folder (<case>_{{flair,t1,t1ce,t2,seg}}): pass --dataset brats"
    with pytest.raises(SystemExit) as exit_:
        main(["check", "--root", str(case)])
    assert advice in str(exit_.value.code) and "convert_folders" not in str(exit_.value.code)
    with pytest.raises(FileNotFoundError, match=rf"one BraTS case's folder .* --root {tmp_path / 'cases'}$"):
        get_spec("nnunet", root=case)
    report = check_dataset("brats", tmp_path / "cases", progress=False)  # the advice, followed
    assert [c.case for c in report.cases] == ["Brats18_X"] and not report.problems, report.format()
    brats_case(tmp_path / "flat", "A")
    brats_case(tmp_path / "flat", "B")
    with pytest.raises(
        FileNotFoundError, match=r"holds BraTS cases' files .*: A, B\) side by side: .*--dataset brats"
    ):
        get_spec("nnunet", root=tmp_path / "flat")


def test_one_folder_a_case_named_like_a_label_is_the_image_of_its_own_label(tmp_path):
    """x_seg.nii.gz with its label x_seg_seg.nii.gz: x_seg ends like a label, but has one of its own."""
    folder = tmp_path / "cases"
    for stem in ("a", "x_seg"):
        volume(folder / f"{stem}.nii.gz", np.ones((20, 18, 4), np.float32))
        volume(folder / f"{stem}_seg.nii.gz", label_map())
    out = convert_folders(folder, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["a_0000.nii.gz", "x_seg_0000.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["a.nii.gz", "x_seg.nii.gz"]
    assert (out / "labelsTr" / "x_seg.nii.gz").read_bytes() == (folder / "x_seg_seg.nii.gz").read_bytes()


@pytest.mark.parametrize("ending", [".mha", ".nrrd"])
def test_metaimage_and_nrrd_volumes_are_copied_as_they_are(tmp_path, ending):
    """MetaImage and NRRD volumes (which the nnunet reader takes) were refused by name. A 3-D
    single-channel one is now copied as shipped, with its label of the same type on its grid, and
    dataset.json names the file type; a label off its image's grid, one of another type and a
    multi-channel image are refused by name."""
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(0)
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # turned in-plane: not the axes

    def write(path: Path, array: np.ndarray, **grid) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        img = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
        img.SetSpacing(grid.get("spacing", (0.9, 0.8, 2.5)))
        img.SetOrigin((10.0, -4.0, 3.0))
        img.SetDirection(direction)
        sitk.WriteImage(img, str(path))
        return path

    for case in ("a01", "b02"):
        write(tmp_path / "images" / f"{case}{ending}", rng.normal(size=(4, 18, 20)).astype(np.float32))
        write(tmp_path / "labels" / f"{case}_seg{ending}", label_map((1, 2)).T.copy())
    out = convert_folders(tmp_path / "images", tmp_path / "Dataset502", tmp_path / "labels", progress=False)
    for case in ("a01", "b02"):
        source = (tmp_path / "images" / f"{case}{ending}").read_bytes()
        assert (out / "imagesTr" / f"{case}_0000{ending}").read_bytes() == source
        label = (tmp_path / "labels" / f"{case}_seg{ending}").read_bytes()
        assert (out / "labelsTr" / f"{case}{ending}").read_bytes() == label
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["file_ending"] == ending and meta["channel_names"] == {"0": "image"}
    assert meta["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
    report = check_dataset("nnunet", out, progress=False)
    assert report.ok, report.format()

    off = write(tmp_path / "labels" / f"b02_seg{ending}", np.zeros((4, 18, 20), np.uint8), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match=f"b02_seg{ending}: its spacing .* differs from its image's"):
        convert_folders(tmp_path / "images", tmp_path / "o1", tmp_path / "labels", progress=False)
    off.unlink()
    volume(tmp_path / "labels" / "b02_seg.nii.gz", label_map())
    with pytest.raises(
        ValueError, match=f"b02_seg.nii.gz: the label of b02{ending} must be a {ending} file too"
    ):
        convert_folders(tmp_path / "images", tmp_path / "o2", tmp_path / "labels", progress=False)
    (tmp_path / "labels" / "b02_seg.nii.gz").unlink()
    write(tmp_path / "labels" / f"b02_seg{ending}", label_map().T.copy())
    write(tmp_path / "images" / f"b02{ending}", np.zeros((4, 18, 20, 2), np.float32))
    with pytest.raises(ValueError, match=f"b02{ending}: .*2 channels.*one file per channel"):
        convert_folders(tmp_path / "images", tmp_path / "o3", tmp_path / "labels", progress=False)
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


@pytest.mark.parametrize("shape, vector", [((2, 4, 18, 20), False), ((4, 18, 20, 2), True)])
def test_a_metaimage_label_of_more_than_one_3d_channel_is_refused_by_name(tmp_path, shape, vector):
    """A 4-D MetaImage label stopped the conversion with numpy's "operands could not be broadcast"
    (its grid compared with its image's), naming no file; a 3-D one of two components per voxel was
    copied, and only the nnunet check refused it later. Both are now refused, naming the label."""
    sitk = pytest.importorskip("SimpleITK")

    def write(path: Path, array: np.ndarray, vector: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))

    write(tmp_path / "images" / "a01.mha", np.ones((4, 18, 20), np.float32))
    write(tmp_path / "labels" / "a01.mha", np.zeros(shape, np.uint8), vector)
    with pytest.raises(ValueError, match=r"a01.mha: a \d-D label of \d component\(s\) per voxel: the label"):
        convert_folders(tmp_path / "images", tmp_path / "out", tmp_path / "labels", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_metaimage_label_turned_off_its_image_s_grid_is_refused_as_the_check_refuses_it(tmp_path):
    """The label's direction was compared with its image's within 1e-3, but the nnunet check
    compares the affines (direction times spacing) within 1e-3: a label turned by 0.8 mrad with
    2.5 mm slices was copied, and the check refused it afterwards ("affine differs"). The converter
    now compares direction times spacing, as the check does, and refuses it naming the label."""
    sitk = pytest.importorskip("SimpleITK")
    turn = 8e-4
    cos, sin = np.cos(turn), np.sin(turn)

    def write(path: Path, array: np.ndarray, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        img = sitk.GetImageFromArray(array)
        img.SetSpacing((0.9, 0.8, 2.5))
        img.SetDirection(direction)
        sitk.WriteImage(img, str(path))

    for case in ("a01", "b02"):
        write(tmp_path / "images" / f"{case}.mha", np.ones((4, 18, 20), np.float32))
        write(tmp_path / "labels" / f"{case}.mha", label_map().T.copy())
    out = convert_folders(tmp_path / "images", tmp_path / "o1", tmp_path / "labels", progress=False)
    assert check_dataset("nnunet", out, progress=False).ok
    write(tmp_path / "labels" / "b02.mha", label_map().T.copy(), (cos, 0, sin, 0, 1, 0, -sin, 0, cos))
    with pytest.raises(ValueError, match=r"b02.mha: its direction .* differs from its image's"):
        convert_folders(tmp_path / "images", tmp_path / "o2", tmp_path / "labels", progress=False)


@pytest.mark.parametrize("kind", ["affine", "shape", "mha", "png"])
def test_a_label_off_its_image_s_grid_is_refused_saying_what_to_do(tmp_path, kind):
    """A label off its image's grid was refused with "a label must lie on its image's grid" (or a
    size alone): not what to do about it. The refusal now says how to put it onto the grid."""
    from PIL import Image

    if kind in ("affine", "shape"):
        volume(tmp_path / "images" / "a01.nii.gz", np.ones((20, 18, 4), np.float32))
        off = (
            (label_map(), np.diag([1.0, 1.0, 1.0, 1.0]))
            if kind == "affine"
            else (label_map(shape=(20, 18, 5)),)
        )
        volume(tmp_path / "labels" / "a01.nii.gz", *off)
        how = r"resample it onto its image's grid \(by nearest neighbour"
    elif kind == "mha":
        sitk = pytest.importorskip("SimpleITK")
        for folder, spacing in (("images", (1.0, 1.0, 1.0)), ("labels", (2.0, 1.0, 1.0))):
            (tmp_path / folder).mkdir()
            img = sitk.GetImageFromArray(label_map().T.copy())
            img.SetSpacing(spacing)
            sitk.WriteImage(img, str(tmp_path / folder / "a01.mha"))
        how = r"resample it onto its image's grid \(by nearest neighbour"
    else:
        for folder, size in (("images", (32, 24)), ("labels", (16, 12))):
            (tmp_path / folder).mkdir()
            Image.fromarray(np.zeros(size[::-1], np.uint8), "L").save(tmp_path / folder / "a01.png")
        how = r"resize it to its image's size \(by nearest neighbour"
    with pytest.raises(
        ValueError, match=r"a01\.(nii\.gz|mha|png): .*differs from (its|the) image's.*: " + how
    ):
        convert_folders(tmp_path / "images", tmp_path / "out", tmp_path / "labels", progress=False)


def test_names_that_differ_after_the_case_name_say_which_suffixes_pair_them(tmp_path):
    """ISLES 2022 / BIDS names (``<case>_dwi`` images, ``<case>_msk`` labels) paired no case, and the
    refusal said only "images without a suffix, labels without a suffix": it now names the suffixes
    that pair them, and the suggested flags convert the folders; ``_msk`` is a known label suffix,
    so one folder of ``_dwi`` / ``_msk`` files needs only ``--image_suffix``."""
    cases = ("sub-strokecase0001_ses-0001", "sub-strokecase0002_ses-0001")
    src = plain(tmp_path, cases=cases, image="{}_dwi", label="{}_msk")
    with pytest.raises(
        ValueError,
        match=r"images end in '_dwi', labels in '_msk' \(sub-strokecase0001_ses-0001_dwi.nii.gz and "
        r"sub-strokecase0001_ses-0001_msk.nii.gz\): pass --image_suffix _dwi --label_suffix _msk",
    ):
        convert_folders(src / "images", tmp_path / "out", src / "labels", progress=False)
    out = convert_folders(
        src / "images",
        tmp_path / "out",
        src / "labels",
        image_suffix="_dwi",
        label_suffix="_msk",
        progress=False,
    )
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]
    one = tmp_path / "one"
    for path in [*(src / "images").iterdir(), *(src / "labels").iterdir()]:
        one.mkdir(exist_ok=True)
        path.rename(one / path.name)
    volume(one / f"{cases[0]}_adc.nii.gz", np.ones((20, 18, 4), np.float32))  # a second channel file
    with pytest.raises(
        ValueError, match=r"images end in '_dwi', labels in '_msk' .*--image_suffix _dwi"
    ) as e:
        convert_folders(one, tmp_path / "out_one", progress=False)
    assert (
        "1 case(s) have several image files ('_adc', '_dwi'): this converter takes one file per case"
        in str(e.value)
    )
    assert (
        f"look like ISLES 2022 files: python -m pam_monai convert_isles22 --root {one} --output DIR"
        in str(e.value)
    )
    (one / f"{cases[0]}_adc.nii.gz").unlink()
    out = convert_folders(one, tmp_path / "out_one", image_suffix="_dwi", progress=False)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in cases]


def test_bids_sidecars_and_text_files_are_skipped_and_said_once(tmp_path, capsys):
    """An ISLES / BIDS folder holds ``<name>.json`` sidecars beside ``<name>.nii.gz`` and a licence: the
    converter refused the whole folder for them ("a type this converter does not read"). They are
    skipped, said in one line; a file that may be an image of another type is still refused, and an
    image file that cannot be read still is too."""
    folder = tmp_path / "cases"
    for case in ("x1", "x2"):
        volume(folder / f"{case}_img.nii.gz", np.ones((20, 18, 4), np.float32))
        volume(folder / f"{case}_seg.nii.gz", label_map())
        (folder / f"{case}_img.json").write_text('{"Modality": "MR"}')
    (folder / "REPO_LICENSE.txt").write_text("CC BY-SA 4.0")
    (folder / "dataset_description.json").write_text("{}")
    out = convert_folders(folder, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["x1_0000.nii.gz", "x2_0000.nii.gz"]
    said = capsys.readouterr().out
    assert said.count("skipped") == 1, said
    assert (
        "skipped 2 sidecar file(s) named as an image (x1_img.json, x2_img.json) and 2 text file(s) "
        "(REPO_LICENSE.txt, dataset_description.json): not images" in said
    )
    (folder / "scan.dcm").write_bytes(b"DICM")  # no image of its name: maybe an image, not read here
    with pytest.raises(
        ValueError, match=r"cases: file\(s\) of a type this converter does not read: scan.dcm;"
    ):
        convert_folders(folder, tmp_path / "out2", progress=False)
    (folder / "scan.dcm").unlink()
    (folder / "x2_img.nii.gz").write_bytes(b"not a NIfTI")
    with pytest.raises(ValueError, match=r"x2_img.nii.gz: unreadable"):
        convert_folders(folder, tmp_path / "out2", progress=False)


def test_the_real_isles22_case_folder_converts_with_its_sidecars(shared_data, tmp_path, capsys):
    """The ISLES'22 sample as shipped (``.json`` sidecars, ``REPO_LICENSE.txt``), its DWI as the image."""
    case = shared_data / "isles2022" / "sub-strokecase0009"
    folder = tmp_path / "case"
    folder.mkdir()
    for path in case.iterdir():
        if "_adc" not in path.name and "_flair" not in path.name:
            (folder / path.name).write_bytes(path.read_bytes())
    out = convert_folders(folder, tmp_path / "out", image_suffix="_dwi", progress=False)
    assert [p.name for p in (out / "labelsTr").iterdir()] == ["sub-strokecase0009_ses-0001.nii.gz"]
    assert (
        "skipped 1 sidecar file(s) named as an image (sub-strokecase0009_ses-0001_dwi.json) and 1 text"
        in (capsys.readouterr().out)
    )
