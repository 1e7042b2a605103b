"""Reading and writing the files of the three data sets (NIfTI through nibabel, PNG through PIL).

All readers raise :class:`UnreadableFile` with the underlying reason for anything that cannot be
read completely (missing, not a NIfTI/PNG, truncated, corrupt), so callers can report one clean
message per file.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from ..atomic import atomic_path

__all__ = [
    "NIFTI_SUFFIXES",
    "UnreadableFile",
    "is_nifti",
    "load_nifti",
    "load_png",
    "save_atomic_npy",
    "strip_nifti_suffix",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class UnreadableFile(Exception):
    """A file exists (or should) but cannot be read completely."""


def _unreadable(e: Exception) -> UnreadableFile:
    reason = " ".join(str(e).split())  # one line, whatever the library put in its message
    return UnreadableFile(f"unreadable or truncated file ({type(e).__name__}: {reason})")


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a whole NIfTI file (.nii or .nii.gz): ``(voxel array in its stored dtype, 4x4 affine)``.

    The array keeps nibabel's voxel order (no reorientation) and applies the header's scaling
    (``scl_slope``) when there is one, as ``nibabel`` does.
    """
    try:
        img = nib.load(os.fspath(path))
        data = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except FileNotFoundError as e:
        raise UnreadableFile(f"file not found ({e.strerror})") from e
    except Exception as e:  # nibabel raises many types: ImageFileError, EOFError, zlib.error, OSError...
        raise _unreadable(e) from e
    return data, affine


def load_png(path: str | os.PathLike, label: bool = False) -> np.ndarray:
    """Read a PNG (or BMP, TIFF) into a numpy array: ``H x W`` for a label map or a grey image,
    ``H x W x 3`` for a colour image (RGBA, palette and CMYK images are converted to RGB). With
    ``label``, a palette image gives its palette indices: they are the label values."""
    from PIL import Image

    try:
        with Image.open(os.fspath(path)) as im:
            im.load()
            if im.mode in ("RGBA", "P", "CMYK", "YCbCr") and not (label and im.mode == "P"):
                im = im.convert("RGB")
            return np.asarray(im)
    except FileNotFoundError as e:
        raise UnreadableFile(f"file not found ({e.strerror})") from e
    except Exception as e:
        raise _unreadable(e) from e


def save_atomic_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (.npy) so that readers never see a half-written file.

    Concurrent writers of the same content are harmless: the last rename wins.
    """
    with atomic_path(path, suffix=".npy.tmp") as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
