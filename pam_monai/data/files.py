"""Reading and writing the files of the data sets (NIfTI through nibabel, PNG through PIL; own
volumes in MetaImage ``.mha`` or NRRD through SimpleITK, in nibabel's voxel order and affine).

All readers raise :class:`UnreadableFile` with the underlying reason for anything that cannot be
read completely (missing, not a NIfTI/PNG, truncated, corrupt), so callers can report one clean
message per file.
"""

from __future__ import annotations

import errno
import os

import nibabel as nib
import numpy as np

from ..atomic import atomic_path, os_error_in_chain

__all__ = [
    "NIFTI_SUFFIXES",
    "SITK_SUFFIXES",
    "VOLUME_SUFFIXES",
    "UnreadableFile",
    "as_read_mode",
    "is_nifti",
    "load_nifti",
    "load_png",
    "load_volume",
    "nifti_like",
    "save_atomic_npy",
    "save_sitk_like",
    "strip_nifti_suffix",
    "volume_affine",
    "volume_shape",
    "volume_suffix",
    "voxel_spacing",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class UnreadableFile(Exception):
    """A file exists (or should) but cannot be read completely."""


_LIMITS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def _process_limit(e: BaseException | None, path=None) -> OSError | None:
    """The OSError of a process or system limit behind ``e``, or met opening ``path`` again
    (nibabel reports a file it could not open as ImageFileError "Could not read file", dropping why)."""
    found = os_error_in_chain(e, _LIMITS)
    if found is not None:
        return found
    if path is not None:
        try:
            open(path, "rb").close()
        except OSError as again:
            return again if again.errno in _LIMITS else None
    return None


def _unreadable(e: Exception, path=None) -> UnreadableFile:
    """The reader's error as an :class:`UnreadableFile`; a limit of this process (too many open
    files, no memory) is raised as an ``OSError`` instead: reported as an "unreadable or truncated
    file" it sent users to download sound data again, and ``check`` listed every case as broken."""
    cause = _process_limit(e, path)
    if cause is not None:
        raise OSError(
            cause.errno,
            f"{cause.strerror}: a limit of this process or system, not a fault of the file; raise the open-file "
            "limit (ulimit -n) or free memory, and run again",
            cause.filename,
        ) from e
    reason = " ".join(str(e).split())  # one line, whatever the library put in its message
    # what to do: the file's bytes are wrong (a copy cut short, another format under this name)
    return UnreadableFile(
        f"unreadable or truncated file ({type(e).__name__}: {reason}): copy or convert it again, or leave the "
        "case out"
    )


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
        raise _unreadable(e, path) from e
    return data, affine


def nifti_like(array: np.ndarray, affine: np.ndarray, reference=None) -> nib.Nifti1Image:
    """A NIfTI image of ``array`` on ``affine``'s grid; with the NIfTI header of a ``reference``
    image on that grid, also its qform and sform, each matrix with its own code, and its units.

    The two can differ: a registered image keeps the scanner's qform (code 1) beside an aligned
    sform (code 2, 4 for MNI). ITK (ITK-SNAP, 3D Slicer, SimpleITK) places such an image by its
    qform, nibabel by its sform: a copy whose qform were set from nibabel's affine would lie
    elsewhere than its reference in every ITK viewer. A matrix whose code is 0 is unused by
    readers and is set from ``affine``."""
    img = nib.Nifti1Image(array, affine)
    if isinstance(reference, nib.Nifti1Header):
        q_code, s_code = int(reference["qform_code"]), int(reference["sform_code"])
        img.set_qform(reference.get_qform() if q_code else affine, code=q_code)
        img.set_sform(reference.get_sform() if s_code else affine, code=s_code)
        img.header.set_xyzt_units(*reference.get_xyzt_units())
    return img


SITK_SUFFIXES = (".mha", ".nrrd")  # read and written through SimpleITK (own data)
VOLUME_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def volume_suffix(path: str | os.PathLike) -> str:
    """The volume file type of ``path`` (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``), or ``""``."""
    name = str(path).lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), "")


def _sitk_affine(image) -> np.ndarray:
    """The RAS voxel-to-world affine of a SimpleITK image (SimpleITK's world is LPS), in the
    voxel order of :func:`load_volume` (x, y, z), as nibabel's affine of the same image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def load_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a whole 3-D volume: NIfTI through nibabel (:func:`load_nifti`), MetaImage (``.mha``)
    and NRRD through SimpleITK, as ``(voxel array in x, y, z order, 4x4 RAS affine)``: the array
    and affine nibabel would give for the same image written as NIfTI."""
    if not str(path).lower().endswith(SITK_SUFFIXES):
        return load_nifti(path)
    import SimpleITK as sitk

    if not os.path.exists(path):
        raise UnreadableFile("file not found (No such file or directory)")
    try:
        image = sitk.ReadImage(os.fspath(path))
    except Exception as e:  # SimpleITK raises RuntimeError for anything it cannot read
        raise _unreadable(e, path) from e
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise UnreadableFile(
            f"expected a 3-D single-component volume, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0)), _sitk_affine(image)


def _sitk_header(path: str | os.PathLike):
    """A SimpleITK reader that has read ``path``'s header only (size, spacing, origin, direction)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    reader.ReadImageInformation()
    return reader


def volume_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The voxel shape of a volume file (x, y, z), from its header only."""
    if not str(path).lower().endswith(SITK_SUFFIXES):
        return tuple(nib.load(os.fspath(path)).shape)
    return tuple(int(v) for v in _sitk_header(path).GetSize())


def volume_affine(path: str | os.PathLike) -> np.ndarray:
    """The RAS affine of a volume file, from its header only (see :func:`load_volume`)."""
    if not str(path).lower().endswith(SITK_SUFFIXES):
        return np.asarray(nib.load(os.fspath(path)).affine, dtype=np.float64)
    return _sitk_affine(_sitk_header(path))


def voxel_spacing(affine, ndim: int = 3) -> tuple[float, ...]:
    """Voxel sizes (mm) along the first ``ndim`` array axes from a volume's affine: the norms of
    its columns, so an oblique or flipped axis keeps its size (1.0 per axis without an affine).
    Computed in float64 whatever the affine's type: the checker and the metrics agree to the bit."""
    if affine is None:
        return (1.0,) * ndim
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    return tuple(float(s) for s in np.sqrt((columns**2).sum(axis=0))[:ndim])


def save_sitk_like(array: np.ndarray, reference: str | os.PathLike, path: str | os.PathLike) -> None:
    """Write ``array`` (x, y, z, as :func:`load_volume` reads) to ``path`` (``.mha`` / ``.nrrd``)
    atomically, on the grid of the ``reference`` volume (origin, spacing, direction)."""
    import SimpleITK as sitk

    reader = _sitk_header(reference)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetOrigin(reader.GetOrigin())
    image.SetSpacing(reader.GetSpacing())
    image.SetDirection(reader.GetDirection())
    with atomic_path(path, suffix=volume_suffix(path)) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr")  # PIL modes read as three channels


def as_read_mode(image, label: bool = False):
    """A PIL image in the mode :func:`load_png` gives: RGBA, palette, CMYK and YCbCr images as RGB,
    grey with alpha as grey; with ``label``, a palette image stays its indices (the label values)."""
    if image.mode != "RGB" and image.mode in COLOUR_MODES and not (label and image.mode == "P"):
        return image.convert("RGB")
    return image.convert("L") if image.mode == "LA" else image


def load_png(path: str | os.PathLike, label: bool = False) -> np.ndarray:
    """Read a PNG (or BMP, TIFF) into a numpy array: ``H x W`` for a label map or a grey image,
    ``H x W x 3`` for a colour image (RGBA, palette and CMYK images are converted to RGB, grey with
    alpha to grey). With
    ``label``, a palette image gives its palette indices: they are the label values."""
    from PIL import Image

    try:
        with Image.open(os.fspath(path)) as im:
            im.load()
            return np.asarray(as_read_mode(im, label))
    except FileNotFoundError as e:
        raise UnreadableFile(f"file not found ({e.strerror})") from e
    except Exception as e:
        raise _unreadable(e, path) from e


EXIF_ORIENTATION = 0x0112  # the EXIF tag
EXIF_TURNS = {
    2: "mirrored",
    3: "turned 180 degrees",
    4: "flipped",
    5: "mirrored and turned",
    6: "turned 90 degrees",
    7: "flipped and turned",
    8: "turned 270 degrees",
}


def exif_orientation(path: str | os.PathLike) -> int | None:
    """The EXIF orientation tag of an image file (2..8: viewers turn or mirror it), None when it
    has none or 1 (as stored). Images are read as stored, as nnU-Net reads them."""
    from PIL import Image

    try:
        with Image.open(os.fspath(path)) as im:
            value = im.getexif().get(EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - unreadable files are named by whoever reads them
        return None
    return int(value) if value in EXIF_TURNS else None


def save_atomic_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (.npy) so that readers never see a half-written file.

    Concurrent writers of the same content are harmless: the last rename wins.
    """
    with atomic_path(path, suffix=".npy.tmp") as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
