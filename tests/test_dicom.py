"""DICOM series into the nnU-Net layout's image files (python -m pam_monai convert_dicom)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pam_monai.data.dicom import convert_dicom, find_series, keep_locale
from pam_monai.data.files import load_volume

ROOT = Path(__file__).resolve().parents[1]
UID = "1.2.826.0.1.3680043.2.1125.9."


def write_series(
    vol,
    folder: Path,
    patient: str,
    number: int,
    spacing=(0.8, 0.7, 2.5),
    origin=(-100.0, -90.0, 30.0),
    study: str | None = None,
    positions=None,
    slices=None,
):
    """A DICOM series of ``vol`` (z, y, x), one file per slice, as a scanner export holds it;
    ``positions``: other ImagePositionPatient per slice (a missing slice, tilt); ``slices``: which
    slices to write into ``folder`` (a series spread over folders)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = {
        "0020|000e": f"{UID}{patient.encode().hex()}1.{number}",
        "0020|000d": study or f"{UID}{patient.encode().hex()}1",
        "0010|0020": patient,
        "0020|0011": str(number),
        "0008|0060": "CT",
        "0008|103e": f"series {number}",
        "0020|0037": "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))),
    }
    for i in range(image.GetDepth()) if slices is None else slices:
        s = image[:, :, i]
        for tag, value in tags.items():
            s.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, i)) if positions is None else positions[i]
        s.SetMetaData("0020|0032", "\\".join(map(str, position)))
        s.SetMetaData("0020|0013", str(i + 1))
        writer.SetFileName(str(folder / f"s{number}_{i:03d}.dcm"))
        with keep_locale():  # GDCM's writer would leave the process in the "C" locale
            writer.Execute(s)


def test_series_become_cases_with_their_voxels_and_geometry(tmp_path):
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 1500, (5, 12, 10)).astype(np.int16)  # z, y, x
    write_series(ct, tmp_path / "export" / "study1", "P 001", 3)
    write_series(ct[:, ::-1], tmp_path / "export" / "study1", "P 001", 4)  # a second series, same folder
    write_series(ct[:1], tmp_path / "export" / "xray", "P002", 1)  # one image: skipped
    out = tmp_path / "imagesTs"
    written = convert_dicom(tmp_path / "export", out, progress=False)
    assert [p.name for p in written] == ["P-001_0000.nii.gz", "P-001-2_0000.nii.gz"]
    first, affine = load_volume(written[0])
    np.testing.assert_array_equal(first, ct.transpose(2, 1, 0))  # x, y, z as nibabel reads NIfTI
    np.testing.assert_array_equal(load_volume(written[1])[0], ct[:, ::-1].transpose(2, 1, 0))
    # DICOM's LPS origin and spacing, as the RAS affine
    np.testing.assert_allclose(
        affine,
        np.diag([-0.8, -0.7, 2.5, 1.0])
        + np.array([[0, 0, 0, 100], [0, 0, 0, 90], [0, 0, 0, 30], [0, 0, 0, 0]]),
        atol=1e-5,
    )
    record = json.loads((out / "dicom_series.json").read_text())
    assert (
        record["P-001"]["0000"]["series_number"] == "3"
        and record["P-001-2"]["0000"]["description"] == "series 4"
    )

    # another channel of the same patients joins their cases
    write_series(ct // 2, tmp_path / "adc", "P 001", 7)
    written = convert_dicom(tmp_path / "adc", out, channel=1, progress=False)
    assert [p.name for p in written] == ["P-001_0001.nii.gz"]
    assert convert_dicom(tmp_path / "export", out, progress=False) == []  # a re-run adds only new series
    (out / "dicom_series.json").unlink()  # without the record, existing images are still never replaced
    (out / "P-001_0000.nii.gz").write_bytes((out / "P-001-2_0000.nii.gz").read_bytes())
    with pytest.raises(FileExistsError, match="P-001_0000.nii.gz exists but is not in"):
        convert_dicom(tmp_path / "export", out, progress=False)
    with pytest.raises(ValueError, match="no DICOM series found"):
        convert_dicom(tmp_path / "imagesTs", tmp_path / "x", progress=False)


def test_an_image_written_but_not_recorded_is_recorded_by_the_re_run(tmp_path):
    """Each image is written, then dicom_series.json: a conversion killed in between left an image
    the record lacks, and every re-run stopped at it ("exists: convert into an empty folder"). The
    re-run records it when it holds the series' image, and names it when it holds another."""
    ct = np.random.default_rng(0).integers(-1000, 1500, (3, 8, 6)).astype(np.int16)
    write_series(ct, tmp_path / "export" / "one", "P1", 1)
    write_series(ct[:, ::-1], tmp_path / "export" / "two", "P2", 1)
    out = tmp_path / "out"
    convert_dicom(tmp_path / "export", out, progress=False)
    full = json.loads((out / "dicom_series.json").read_text())
    (out / "dicom_series.json").write_text(json.dumps({"P1": full["P1"]}))  # killed before P2's record
    image = (out / "P2_0000.nii.gz").read_bytes()
    assert convert_dicom(tmp_path / "export", out, progress=False) == []
    assert json.loads((out / "dicom_series.json").read_text()) == full
    assert (out / "P2_0000.nii.gz").read_bytes() == image  # not written again

    (out / "dicom_series.json").write_text(json.dumps({"P1": full["P1"]}))
    (out / "P2_0000.nii.gz").write_bytes((out / "P1_0000.nii.gz").read_bytes())  # another image
    with pytest.raises(FileExistsError) as err:
        convert_dicom(tmp_path / "export", out, progress=False)
    assert str(err.value).startswith(
        f"{out / 'P2_0000.nii.gz'} exists but is not in {out / 'dicom_series.json'}"
    )
    assert "move it out of the folder" in str(err.value)


def test_channels_of_two_cases_on_one_grid_are_assigned_with_a_warning(tmp_path, caplog):
    """Two channel-0 series of one study on one grid (P1, P1-2) took the study's channel-1 series in
    folder order without a word, though nothing tells which belongs to which case."""
    ct = np.random.default_rng(0).integers(-1000, 1500, (3, 8, 6)).astype(np.int16)
    write_series(ct, tmp_path / "t1" / "a", "P1", 1)
    write_series(ct[:, ::-1], tmp_path / "t1" / "b", "P1", 2)
    write_series(ct // 2, tmp_path / "t2" / "a", "P1", 3)
    write_series(ct[:, ::-1] // 2, tmp_path / "t2" / "b", "P1", 4)
    out = tmp_path / "out"
    convert_dicom(tmp_path / "t1", out, progress=False)
    with caplog.at_level("WARNING", logger="pam_monai"):
        written = convert_dicom(tmp_path / "t2", out, channel=1, progress=False)
    assert [p.name for p in written] == ["P1_0001.nii.gz", "P1-2_0001.nii.gz"]
    for folder, number, case in (("a", 3, "P1"), ("b", 4, "P1-2")):
        assert (
            f"{tmp_path / 't2' / folder}: series {number} (series {number}) converted as channel 0001 of case "
            f"{case}, a guess: the study has 2 cases of channel 0000 on its grid (P1, P1-2)"
        ) in caplog.text
    assert "swap the _0001.nii.gz files of two cases if wrong" in caplog.text


def test_patient_ids_that_differ_in_letter_case_only_become_two_cases(tmp_path):
    """Patients "ab" and "AB" became ab_0000 and AB_0000: one file on macOS and Windows, where the
    second conversion found the first's file and stopped."""
    ct = np.random.default_rng(0).integers(-1000, 1500, (3, 8, 6)).astype(np.int16)
    write_series(ct, tmp_path / "export" / "one", "ab", 1)
    write_series(ct[:, ::-1], tmp_path / "export" / "two", "AB", 1)
    written = convert_dicom(tmp_path / "export", tmp_path / "out", progress=False)
    names = [p.name for p in written]
    assert len({n.casefold() for n in names}) == 2, names
    assert sorted(n.split("_")[0].casefold() for n in names) == ["ab", "ab-2"]


def test_series_of_a_flat_folder_in_slice_order(tmp_path):
    """One export folder: two series, file names out of slice order, a series without a Series
    Instance UID and files that are no DICOM; each series gets its own files along the normal."""
    vol = np.zeros((5, 6, 6), np.int16)
    flat = tmp_path / "flat"
    write_series(vol, flat, "A", 2)  # slice i at z = 30 + 2.5 i
    write_series(vol, flat, "A", 1, positions=[(-100.0, -90.0, 30.0 - 2.5 * i) for i in range(5)])
    order = [3, 0, 4, 1, 2]  # file k holds slice order[k]
    for number in (1, 2):
        for k, i in enumerate(order):
            (flat / f"s{number}_{i:03d}.dcm").rename(flat / f"x{number}_{k}.dcm")
    write_series(vol, flat, "A", 3)
    uid = f"{UID}{b'A'.hex()}1.3".encode()
    for f in flat.glob("s3_*.dcm"):  # blank UID (GDCM's identifier ""): skipped, not a series ""
        f.write_bytes(f.read_bytes().replace(uid, b" " * len(uid)))
    (flat / "README.txt").write_text("not DICOM\n")
    (flat / "dicom_series.json").write_text("{}\n")
    series = find_series(flat)
    assert [u for u, _ in series] == [f"{UID}{b'A'.hex()}1.1", f"{UID}{b'A'.hex()}1.2"]  # by UID
    assert [Path(f).name for f in series[0][1]] == [f"x1_{order.index(i)}.dcm" for i in (4, 3, 2, 1, 0)]
    assert [Path(f).name for f in series[1][1]] == [f"x2_{order.index(i)}.dcm" for i in range(5)]
    assert all(Path(f).parent == flat for _, files in series for f in files)


def test_writing_dicom_keeps_the_locale(tmp_path):
    import locale

    before = locale.getpreferredencoding(False)
    write_series(np.zeros((2, 4, 4), np.int16), tmp_path / "dcm", "anon", 1)
    convert_dicom(tmp_path / "dcm", tmp_path / "o", progress=False)
    assert locale.getpreferredencoding(False) == before


def test_convert_dicom_command(tmp_path):
    write_series(np.zeros((3, 8, 8), np.int16), tmp_path / "dcm", "anon", 2)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pam_monai",
            "convert_dicom",
            "--input_dir",
            str(tmp_path / "dcm"),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 1 image(s)" in result.stdout and (tmp_path / "o" / "anon_0000.nii.gz").is_file()


def test_series_that_would_convert_wrongly_are_skipped_by_name(tmp_path, caplog):
    vol = np.arange(6 * 8 * 8, dtype=np.int16).reshape(6, 8, 8)
    export = tmp_path / "export"
    write_series(vol, export / "gap", "GAP", 1)
    (export / "gap" / "s1_003.dcm").unlink()  # a missing slice
    z = [30.0, 30.0, 32.5, 32.5, 35.0, 35.0]  # two volumes in one series (b-values)
    write_series(vol, export / "dwi", "DWI", 1, positions=[(-100.0, -90.0, v) for v in z])
    z = [30.0, 32.5, 35.0, 30.0, 32.5, 35.0]  # the same, files volume after volume
    write_series(vol, export / "dwi2", "DWI2", 1, positions=[(-100.0, -90.0, v) for v in z])
    tilt = [(-100.0, -90.0 + 1.0 * i, 30.0 + 2.5 * i) for i in range(6)]  # gantry tilt
    write_series(vol, export / "tilt", "TILT", 1, positions=tilt)
    write_series(vol, export / "good", "", 1)  # no patient ID: named after its study
    write_series(vol, export / "split" / "a", "SPLIT", 1, slices=[0, 1, 2])  # one series, two folders
    write_series(vol, export / "split" / "b", "SPLIT", 1, slices=[3, 4, 5])
    write_series(vol, export / "split2" / "b", "SPLIT2", 1, slices=[0, 1, 2])  # folders against slice order
    write_series(vol, export / "split2" / "a", "SPLIT2", 1, slices=[3, 4, 5])
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="pam_monai"):
        written = convert_dicom(export, out, progress=False)
    names = sorted(p.name for p in written)
    assert len(names) == 3 and {"SPLIT_0000.nii.gz", "SPLIT2_0000.nii.gz"} < set(names), names
    assert names[2].startswith("study-"), names
    np.testing.assert_array_equal(load_volume(out / "SPLIT_0000.nii.gz")[0], vol.transpose(2, 1, 0))
    np.testing.assert_array_equal(load_volume(out / "SPLIT2_0000.nii.gz")[0], vol.transpose(2, 1, 0))
    text = caplog.text
    assert "gap: series 1 (series 1) not converted: irregular slice spacing" in text
    assert (
        "dwi: series 1 (series 1) not converted: several volumes in one series (repeated slice positions"
        in text
    )
    assert (
        "dwi2: series 1 (series 1) not converted: several volumes in one series (repeated slice positions"
        in text
    )
    assert "slices shifted sideways along the stack (gantry tilt)" in text

    # a channel-1 series joins only a case of its own study on the same grid
    write_series(vol, tmp_path / "adc" / "ok", "SPLIT", 2)  # SPLIT's study: joins
    write_series(vol, tmp_path / "adc" / "other", "SPLIT", 3, study=f"{UID}999")  # another study
    write_series(vol[:, :4], tmp_path / "adc" / "grid", "SPLIT", 4)  # SPLIT's study, another grid
    caplog.clear()
    with caplog.at_level("WARNING", logger="pam_monai"):
        written = convert_dicom(tmp_path / "adc", out, channel=1, progress=False)
    assert [p.name for p in written] == ["SPLIT_0001.nii.gz"]
    assert "no case of channel 0000 from its study" in caplog.text
    assert "already have channel 0001 or lie on another grid" in caplog.text


def test_a_converted_folder_is_ready_for_inference(tmp_path):
    from pam_monai.data.nnunet import nnunet_spec
    from pam_monai.engines import find_inference_cases

    write_series(np.zeros((3, 8, 8), np.int16), tmp_path / "dcm", "P1", 1)
    convert_dicom(tmp_path / "dcm", tmp_path / "cases", progress=False)
    spec = nnunet_spec(
        {"channel_names": {"0": "MR"}, "labels": {"background": 0, "lesion": 1}}, crop_size=[16, 16]
    )
    items = find_inference_cases(spec, tmp_path / "cases")  # dicom_series.json beside the images is no case
    assert [i["case"] for i in items] == ["P1"]


def test_dicom_given_as_the_images_names_convert_dicom(tmp_path):
    """A PACS export given as --input_dir said "only folders (P1): the images lie in this folder
    itself", or, for slice files in the folder itself, one "not an image file name" line per slice."""
    from pam_monai.data.nnunet import nnunet_spec
    from pam_monai.engines import find_inference_cases

    write_series(np.zeros((3, 8, 8), np.int16), tmp_path / "dcm" / "P1", "P1", 1)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted((tmp_path / "dcm" / "P1").iterdir())):  # PACS names: no ending
        (flat / f"IM{i:04d}").write_bytes(path.read_bytes())
    spec = nnunet_spec(
        {"channel_names": {"0": "MR"}, "labels": {"background": 0, "lesion": 1}}, crop_size=[16, 16]
    )
    for folder, example in ((tmp_path / "dcm", "P1/s1_000.dcm"), (flat, "IM0000")):
        with pytest.raises(ValueError) as err:
            find_inference_cases(spec, folder)
        lines = str(err.value).splitlines()
        assert lines[1:] == [
            f"{folder.name}: {folder}: no <case>_0000.nii.gz image, but DICOM files (3, e.g. {example}): convert "
            f"the series first, python -m pam_monai convert_dicom {folder} DIR, and use DIR (the bundles' "
            "--input_dir DIR)"
        ], lines


def test_slices_with_their_own_rescale_slope_keep_their_values(tmp_path):
    """A series whose first slice has an integral slope and the others 0.5: the others' HU values
    are kept (they were truncated to the first slice's integer pixel type)."""
    raw = np.random.default_rng(1).integers(0, 3000, (3, 6, 5)).astype(np.int16)
    folder = tmp_path / "pet"
    write_series(raw, folder, "PET", 1)  # written with slope 1, intercept 0 (stored as given)
    files = sorted(folder.iterdir())
    stored = [np.frombuffer(f.read_bytes()[-raw[0].nbytes :], np.int16).reshape(6, 5) for f in files]
    for f in files[1:]:  # the slope element (implicit VR: tag, length 2, "1 "), as ".5"
        data = f.read_bytes()
        element = b"\x28\x00\x53\x10\x02\x00\x00\x00"
        at = data.index(element) + len(element)
        f.write_bytes(data[:at] + b".5" + data[at + 2 :])
    written = convert_dicom(folder, tmp_path / "out", progress=False)
    volume = load_volume(written[0])[0]
    np.testing.assert_array_equal(volume[..., 0], stored[0].T)
    for i in (1, 2):
        np.testing.assert_allclose(volume[..., i], stored[i].T * 0.5)


def test_a_multi_frame_file_converts_with_its_geometry(tmp_path, caplog):
    """Enhanced CT / MR: the whole volume in one file, which the series reader reads 4-D."""
    vol = np.arange(6 * 8 * 10, dtype=np.int16).reshape(6, 8, 10)
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin((-100.0, -90.0, 30.0))
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c))  # oblique
    for tag, value in {"0020|000e": f"{UID}7.1", "0010|0020": "MF", "0008|0060": "MR"}.items():
        image.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for name in ("one/mf.dcm", "two/a.dcm", "two/b.dcm"):  # two/: two volumes of one series
        (tmp_path / name).parent.mkdir(exist_ok=True)
        writer.SetFileName(str(tmp_path / name))
        with keep_locale():
            writer.Execute(image)
        image.SetMetaData("0020|000e", f"{UID}7.2")
    with caplog.at_level("WARNING", logger="pam_monai"):
        written = convert_dicom(tmp_path, tmp_path / "out", progress=False)
    assert [p.name for p in written] == ["MF_0000.nii.gz"]
    out = sitk.ReadImage(str(written[0]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), vol)
    np.testing.assert_allclose(out.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(out.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(out.GetOrigin(), image.GetOrigin(), atol=1e-6)
    assert "two: series" in caplog.text and "2 multi-frame files in one series" in caplog.text


def test_a_multi_frame_file_with_one_position_converts(tmp_path):
    """A legacy multi-frame file (NM, some converters) carries one Image Position / Orientation
    for the whole file: the slice-spacing check, given that one position, stopped the conversion
    with numpy's 'zero-size array to reduction operation maximum'."""
    vol = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    image = sitk.GetImageFromArray(vol)
    tags = {"0020|000e": f"{UID}8.1", "0010|0020": "NM1", "0008|0060": "NM"}
    tags.update({"0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": "0\\0\\0"})
    for tag, value in tags.items():
        image.SetMetaData(tag, value)
    (tmp_path / "in").mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(tmp_path / "in" / "nm.dcm"))
    with keep_locale():
        writer.Execute(image)
    (written,) = convert_dicom(tmp_path / "in", tmp_path / "out", progress=False)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(written))), vol)


def test_slices_of_another_pixel_type_keep_their_values(tmp_path):
    """A series whose first slice is signed and the others unsigned (re-exported slices): the
    unsigned values are not wrapped into the first slice's int16 (60000 is not -5536)."""
    signed = np.full((4, 6, 6), 100, np.int16)
    signed[0] = -50
    write_series(signed, tmp_path / "in", "PX", 1)
    write_series(np.full((4, 6, 6), 60000, np.uint16), tmp_path / "unsigned", "PX", 1)
    for i in (1, 2, 3):
        (tmp_path / "unsigned" / f"s1_{i:03d}.dcm").replace(tmp_path / "in" / f"s1_{i:03d}.dcm")
    (written,) = convert_dicom(tmp_path / "in", tmp_path / "out", progress=False)
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(written)))
    assert [np.unique(v).tolist() for v in values] == [[-50], [60000], [60000], [60000]]


def test_a_folder_without_dicom_is_refused_without_leaving_an_output_folder(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no DICOM here")
    with pytest.raises(ValueError, match="notes: no DICOM series found"):
        convert_dicom(tmp_path / "notes", tmp_path / "out" / "nifti", progress=False)
    assert not (tmp_path / "out").exists()
