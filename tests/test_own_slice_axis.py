"""Own volumes are sliced along array axis 2: a case stored with its thick axis first is named, by the
checker (training) and by inference, instead of being cut through its 5 mm axis in silence."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import torch

from pam_monai.data import check_dataset, synth
from pam_monai.engines import CasePredictor, find_inference_cases, inference_spec


def _thick_first(src, dst, case):
    """Rewrite case's files with the voxel axes rolled (2, 0, 1) and the spacing 5 x 1 x 1 mm: the
    same image, its thick axis first."""
    for path in [*src.glob(f"imagesTr/{case}_*.nii.gz"), src / "labelsTr" / f"{case}.nii.gz"]:
        img = nib.load(path)
        data = np.transpose(np.asanyarray(img.dataobj), (2, 0, 1))
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.diag([5.0, 1.0, 1.0, 1.0])), out)


def test_thick_axis_first_is_named_by_check_and_inference(tmp_path, caplog):
    root = synth("nnunet", tmp_path / "Dataset904_Thick", cases=5, slices=4)
    case = sorted(p.name[:-7] for p in (root / "labelsTr").glob("*.nii.gz"))[0]
    _thick_first(root, root, case)
    report = check_dataset("nnunet", root)
    text = report.format()
    assert f"WARNING {case}:" in text and "thickest axis is array axis 0" in text
    assert text.count("thickest axis") == 1  # the others are sliced along their thick axis

    spec = inference_spec("nnunet", root, None, None)
    items = [i for i in find_inference_cases(spec, root / "imagesTr") if i["case"] == case]

    class Zero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x[:, :1] * 0 - 1 + 0 * self.p

    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        CasePredictor(Zero(), items, spec, tmp_path / "out").run()
    assert "thickest axis is array axis 0" in caplog.text
