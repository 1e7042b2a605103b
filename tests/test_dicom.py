"""DICOM series into the nnU-Net layout's image files (python -m pam_monai convert_dicom)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pam_monai.data.dicom import convert_dicom, keep_locale
from pam_monai.data.files import load_volume

ROOT = Path(__file__).resolve().parents[1]
UID = "1.2.826.0.1.3680043.2.1125.9."


def write_series(
    vol, folder: Path, patient: str, number: int, spacing=(0.8, 0.7, 2.5), origin=(-100.0, -90.0, 30.0)
):
    """A DICOM series of ``vol`` (z, y, x), one file per slice, as a scanner export holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = {
        "0020|000e": f"{UID}{patient.encode().hex()}.{number}",
        "0020|000d": f"{UID}{patient.encode().hex()}",
        "0010|0020": patient,
        "0020|0011": str(number),
        "0008|0060": "CT",
        "0008|103e": f"series {number}",
        "0020|0037": "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))),
    }
    for i in range(image.GetDepth()):
        s = image[:, :, i]
        for tag, value in tags.items():
            s.SetMetaData(tag, value)
        s.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, i)))))
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
    with pytest.raises(FileExistsError, match="P-001_0000.nii.gz exists"):
        convert_dicom(tmp_path / "export", out, progress=False)
    with pytest.raises(ValueError, match="no DICOM series found"):
        convert_dicom(tmp_path / "imagesTs", tmp_path / "x", progress=False)


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
