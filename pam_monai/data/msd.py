"""Medical Segmentation Decathlon (MSD) tasks -> the nnU-Net v2 raw layout (own data, ``nnunet``).

MSD tasks (``Task01_BrainTumour`` ... ``Task10_Colon``, also what ``monai.apps.DecathlonDataset``
downloads) keep every channel of a case in one 4-D NIfTI file and number their labels the other
way round (``{"0": "background", "1": "edema"}``). :func:`convert_msd` writes the same cases as
one 3-D file per channel with an nnU-Net v2 ``dataset.json``, which the ``nnunet`` reader, the
bundles (``--task nnunet``) and the experiments read. Only the cases listed in the task's
``dataset.json`` are converted, so the macOS ``._*`` files of the MSD archives are ignored.
Voxel data and affines are kept exactly; the output appears by a rename only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir
from .files import nifti_like

# what to do about a label volume off its image's grid (the converters' refusals)
ONTO_GRID = (
    "resample it onto its image's grid (by nearest neighbour, MONAI's ResampleToMatch(mode='nearest')), "
    "or copy the image's header into it where only the label's header is wrong"
)

__all__ = ["convert_msd", "is_msd_dataset_json", "write_channels", "write_dataset_json", "write_label"]


def is_msd_dataset_json(meta: dict) -> bool:
    """True for an MSD ``dataset.json``: labels keyed by number, cases listed in ``training``."""
    labels = meta.get("labels")
    return (
        isinstance(labels, dict)
        and bool(labels)
        and all(str(k).isdigit() for k in labels)
        and isinstance(meta.get("training"), list)
    )


def _case_id(path: str) -> str:
    name = Path(path).name
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending):
            return name[: -len(ending)]
    raise ValueError(f"{path}: not a NIfTI file (.nii.gz or .nii)")


def _save(volume: np.ndarray, like, path: Path) -> None:
    """Save one 3-D channel with the 4-D file's qform and sform (matrices and codes) and units."""
    import nibabel as nib

    nib.save(nifti_like(volume, like.affine, like.header), str(path))


def write_channels(source: Path, img, case: str, folder: Path, data: np.ndarray | None = None) -> None:
    """Write the NIfTI image ``img`` (loaded from ``source``; ``data`` its voxels when already read)
    as ``folder/<case>_XXXX.nii.gz``, one file per channel: a 3-D ``.nii.gz`` file is copied as
    shipped (no re-encoding), a 4-D one is split along its last axis, each channel keeping the
    file's qform, sform and units."""
    if len(img.shape) == 3 and source.name.endswith(".nii.gz"):
        shutil.copyfile(source, folder / f"{case}_0000.nii.gz")
        return
    data = np.asarray(img.dataobj) if data is None else data
    for c, volume in enumerate([data] if data.ndim == 3 else np.moveaxis(data, -1, 0)):
        _save(np.ascontiguousarray(volume), img, folder / f"{case}_{c:04d}.nii.gz")


def write_label(path: Path, img, target: Path):
    """Copy the label file ``path`` of the NIfTI image ``img`` to ``target`` (a ``.nii.gz`` file as
    shipped) and return it loaded. Raises ``ValueError`` naming ``path`` when it is unreadable or
    not on the image's grid (shape and affine)."""
    import nibabel as nib

    try:
        lab = nib.load(str(path))
    except Exception as e:
        raise ValueError(f"{path}: unreadable ({e})") from e
    if tuple(lab.shape) != tuple(img.shape[:3]):
        raise ValueError(
            f"{path}: shape {tuple(lab.shape)} differs from the image's {tuple(img.shape[:3])}: {ONTO_GRID}"
        )
    if not np.allclose(lab.affine, img.affine, atol=1e-3):
        worst = float(np.abs(lab.affine - img.affine).max())
        raise ValueError(
            f"{path}: its affine differs from its image's (largest difference {worst:g}): a label "
            f"must lie on its image's grid: {ONTO_GRID}"
        )
    if path.name.endswith(".nii.gz"):
        shutil.copyfile(path, target)  # exactly as shipped
    else:
        nib.save(lab, str(target))
    return lab


def write_dataset_json(
    folder: Path, name: str, description: str, channels: dict, labels: dict, **more
) -> None:
    """Write ``folder/dataset.json`` of the nnU-Net v2 raw layout (``more``: ``numTraining``,
    ``file_ending``, ``converted_from``, in that order)."""
    meta = {"name": name, "description": description, "channel_names": channels, "labels": labels, **more}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def convert_msd(task_dir: str | os.PathLike, output: str | os.PathLike, progress: bool = True) -> Path:
    """Convert the MSD task under ``task_dir`` into the nnU-Net v2 raw layout at ``output`` (which
    must not exist yet) and return it. Training cases go to ``imagesTr`` / ``labelsTr``, the
    ``test`` list to ``imagesTs``. Raises ``ValueError`` naming the file for a missing or
    unreadable case, a label whose grid differs from its image, or a non-MSD ``dataset.json``."""
    import nibabel as nib

    from ..progress import progress_bar

    task_dir, output = Path(task_dir), Path(output)
    meta_path = task_dir / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} not found: expected an MSD task folder (e.g. Task01_BrainTumour)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8-sig"))
    except ValueError as e:
        raise ValueError(f"{meta_path}: not readable JSON ({e})") from e
    if not is_msd_dataset_json(meta):
        raise ValueError(
            f"{meta_path}: not an MSD dataset.json (labels keyed by number and a 'training' list); an nnU-Net v2 "
            "data set needs no conversion"
        )
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} already exists; choose a new folder")
    # "channel_names": what some MSD-style exports call the channels (nnU-Net v2's word)
    modality = meta.get("modality") or meta.get("channel_names") or {"0": "image"}
    channels = {str(i): str(modality[k]) for i, k in enumerate(sorted(modality, key=int))}
    names = [str(name) for _, name in sorted(meta["labels"].items(), key=lambda kv: int(kv[0]))]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # nnU-Net's labels map names to values: one of them would be lost
        raise ValueError(f"{meta_path}: label name(s) {twice} given to several values; name each value once")
    labels = {
        str(name): int(value) for value, name in sorted(meta["labels"].items(), key=lambda kv: int(kv[0]))
    }
    if labels.get("background", 0) != 0 or 0 not in labels.values():
        raise ValueError(f"{meta_path}: label 0 must be the background, got {meta['labels']}")
    labels = {("background" if v == 0 else n): v for n, v in labels.items()}
    unlabelled = [e.get("image") for e in meta["training"] if not e.get("label")]
    if unlabelled:
        raise ValueError(f"{meta_path}: training entries without a 'label': {unlabelled[:3]}")
    cases = [_case_id(e["image"]) for e in meta["training"]]
    repeated = sorted({c for c in cases if cases.count(c) > 1})
    if repeated:  # one would overwrite the other, and numTraining would count it twice
        raise ValueError(f"{meta_path}: training case(s) listed more than once: {repeated[:5]}")
    jobs = [("imagesTr", e["image"], e.get("label")) for e in meta["training"]]
    jobs += [("imagesTs", e if isinstance(e, str) else e["image"], None) for e in meta.get("test", [])]
    with atomic_dir(output) as tmp:  # appears complete or not at all
        for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if meta.get("test") else ()):
            (tmp / sub).mkdir()
        for subset, image, label in progress_bar(
            jobs, desc=f"{task_dir.name}: converting", unit="case", disable=not progress
        ):
            source = task_dir / image
            case = _case_id(image)
            if not source.is_file():
                raise FileNotFoundError(f"{source}: listed in {meta_path.name} but missing")
            try:
                img = nib.load(str(source))
                data = np.asarray(img.dataobj)
            except Exception as e:
                raise ValueError(f"{source}: unreadable ({e})") from e
            count = 1 if data.ndim == 3 else data.shape[-1] if data.ndim == 4 else 0
            if count != len(channels):
                raise ValueError(
                    f"{source}: expected {len(channels)} channel(s) ({', '.join(channels.values())}), got shape {data.shape}"
                )
            write_channels(source, img, case, tmp / subset, data)
            if label is not None:
                lab_path = task_dir / label
                if not lab_path.is_file():
                    raise FileNotFoundError(f"{lab_path}: listed in {meta_path.name} but missing")
                write_label(lab_path, img, tmp / "labelsTr" / f"{case}.nii.gz")
        write_dataset_json(
            tmp,
            meta.get("name") or task_dir.name,
            meta.get("description", ""),
            channels,
            labels,
            numTraining=len(meta["training"]),
            file_ending=".nii.gz",
            converted_from=f"MSD {task_dir.name} by pam_monai convert_msd",
        )
    return output
