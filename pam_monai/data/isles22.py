"""ISLES 2022 (BIDS) -> the nnU-Net v2 raw layout (own data, ``nnunet``).

The paper's ISLES 2018 (CT perfusion) is no longer distributed; ISLES 2022 (MRI: DWI, ADC,
FLAIR; https://isles22.grand-challenge.org) is its successor and ships in BIDS:

    <root>/rawdata/sub-strokecase<n>/ses-0001/dwi/sub-strokecase<n>_ses-0001_dwi.nii.gz
    <root>/rawdata/sub-strokecase<n>/ses-0001/dwi/sub-strokecase<n>_ses-0001_adc.nii.gz
    <root>/rawdata/sub-strokecase<n>/ses-0001/anat/sub-strokecase<n>_ses-0001_FLAIR.nii.gz
    <root>/derivatives/sub-strokecase<n>/ses-0001/sub-strokecase<n>_ses-0001_msk.nii.gz

(any folder depth is accepted: copies with every file of a case in one folder too).
:func:`convert_isles22` writes DWI (channel 0) and ADC (channel 1), which share one grid, and
the lesion mask (label ``lesion`` = 1) as an nnU-Net v2 data set that ``--task nnunet``, the
experiments and ``check`` read. FLAIR is left out: it lies on another grid (e.g. 512x512x29
against DWI's 112x112x73) and would need a registration this tool does not guess. Files are
copied as shipped; the output appears by a rename only when complete.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir
from .msd import write_dataset_json

__all__ = ["convert_isles22", "find_isles22_cases"]

CHANNELS = ("dwi", "adc")  # nnU-Net channels 0000, 0001
_FILE = re.compile(
    r"^(?P<case>sub-strokecase\d+)_ses-\d+_(?P<kind>dwi|adc|msk|flair)\.nii(\.gz)?$", re.IGNORECASE
)


def find_isles22_cases(root: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """``{case: {"dwi": path, "adc": path, "msk": path, ...}}`` for every ISLES 2022 file under
    ``root`` (any depth). Raises ``ValueError`` naming a case with two files of one kind."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(Path(root).rglob("sub-strokecase*")):
        m = _FILE.match(path.name)
        if not m or not path.is_file():
            continue
        kinds = found.setdefault(m["case"], {})
        kind = m["kind"].lower()
        if kind in kinds:
            raise ValueError(
                f"{m['case']}: two {kind} files: {kinds[kind]} and {path}; keep one (a second session: convert "
                "each session's files from a folder of their own)"
            )
        kinds[kind] = path
    return found


def _copy(source: Path, target: Path) -> None:
    if source.name.endswith(".nii.gz"):
        shutil.copyfile(source, target)
    else:  # .nii: compress as nnU-Net's file_ending says
        import nibabel as nib

        nib.save(nib.load(str(source)), str(target))


def convert_isles22(root: str | os.PathLike, output: str | os.PathLike, progress: bool = True) -> Path:
    """Convert the ISLES 2022 data set under ``root`` into the nnU-Net v2 raw layout at ``output``
    (which must not exist yet, or be empty) and return it.

    Cases with DWI, ADC and a mask go to ``imagesTr`` / ``labelsTr``; cases without a mask (a test
    set) to ``imagesTs``. Raises ``ValueError`` naming the case and file for a missing channel,
    DWI and ADC on different grids, or a mask off their grid.
    """
    import nibabel as nib

    from ..progress import progress_bar

    root, output = Path(root), Path(output)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such folder (the ISLES 2022 root, holding rawdata/ and derivatives/)"
        )
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} already exists; choose a new folder")
    cases = find_isles22_cases(root)
    if not cases:
        raise ValueError(
            f"{root}: no ISLES 2022 files (sub-strokecase<n>_ses-<k>_dwi/_adc/_msk.nii.gz) at any depth"
        )
    problems = [
        f"{case}: no {kind} file" for case, files in cases.items() for kind in CHANNELS if kind not in files
    ]
    if problems:
        raise ValueError(
            f"{root}: incomplete cases (the network needs DWI and ADC of every case: add the missing file, or "
            "move the case out of the folder):\n" + "\n".join(problems)
        )
    training = 0
    with atomic_dir(output) as tmp:  # appears complete or not at all
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        for case, files in progress_bar(
            cases.items(), desc="ISLES 2022: converting", unit="case", disable=not progress
        ):
            grids = {}
            for kind in CHANNELS + (("msk",) if "msk" in files else ()):
                try:
                    header = nib.load(str(files[kind]))
                except Exception as e:
                    raise ValueError(f"{files[kind]}: unreadable ({e})") from e
                grids[kind] = (tuple(header.shape), header.affine)
            shape, affine = grids["dwi"]
            for kind in grids:
                if grids[kind][0] != shape:
                    what = f"its shape {grids[kind][0]} differs from the DWI's {shape}"
                elif not np.allclose(grids[kind][1], affine, atol=1e-3):
                    # same shape: say so, or the message would read "(6, 6, 4) differs from (6, 6, 4)"
                    worst = float(np.abs(grids[kind][1] - affine).max())
                    what = f"its affine differs from the DWI's (largest difference {worst:g})"
                else:
                    continue
                raise ValueError(
                    f"{files[kind]}: {what} ({files['dwi'].name}): DWI, ADC and the mask must share one "
                    "grid; resample it onto the DWI's grid or leave the case out"
                )
            subset = "imagesTr" if "msk" in files else "imagesTs"
            for c, kind in enumerate(CHANNELS):
                _copy(files[kind], tmp / subset / f"{case}_{c:04d}.nii.gz")
            if "msk" in files:
                _copy(files["msk"], tmp / "labelsTr" / f"{case}.nii.gz")
                training += 1
        if not training:
            raise ValueError(
                f"{root}: no case has a lesion mask (*_msk.nii.gz, in derivatives/): nothing to train on"
            )
        if not any((tmp / "imagesTs").iterdir()):
            (tmp / "imagesTs").rmdir()
        write_dataset_json(
            tmp,
            "ISLES2022",
            "ISLES 2022 (DWI, ADC; FLAIR left out: another grid), by pam_monai convert_isles22",
            {"0": "DWI", "1": "ADC"},
            {"background": 0, "lesion": 1},
            numTraining=training,
            file_ending=".nii.gz",
            converted_from=f"ISLES 2022 {root.name} by pam_monai convert_isles22",
        )
    return output
