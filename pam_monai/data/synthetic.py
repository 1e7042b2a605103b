"""Synthetic stand-ins for BRATS 2018, ISLES 2018 and CityScapes, in their published layouts.

They exist so that every command, test and bundle runs without the real data (which their
licences keep out of this repository). Each generator writes small data sets with the real
file formats, dtypes, layouts and header geometry, containing lesions or vehicles whose contrast
**fades towards their boundary**: the label covers the whole object, but its outer part differs
from the surroundings by less than the noise, and its outermost rim not at all. A network
therefore misses the periphery, which produces exactly the false negatives ("mistakes") the paper's attention is meant to reduce.

Everything is deterministic for a seed (``numpy.random.default_rng([seed, case])``): the same
seed gives the same voxel arrays.

- BRATS: ``HGG/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``, 240 x 240 x ``slices`` int16
  volumes, 1 mm isotropic with the real files' affine, zero background (skull-stripped), a
  tumour of necrosis (1), enhancing ring (4) and oedema (2); seg alternately int16 and uint8, as
  BraTS ships them. ``lgg_cases`` adds LGG cases without enhancing tumour.
- ISLES: ``TRAINING/case_<n>/SMIR.Brain.XX.O.<MOD>.<id>/SMIR.Brain.XX.O.<MOD>.<id>.nii`` for CT,
  CT_CBF, CT_CBV, CT_MTT, CT_Tmax, CT_4DPWI (4-D) and OT, 256 x 256 x (2..``max_slices``),
  0.9 x 0.9 x 5 mm; the lesion lowers CBF and CBV and raises MTT and Tmax.
- Own data (``nnunet``): the nnU-Net v2 raw layout, two channels and four labels (see
  :func:`synth_nnunet`); never generated as a stand-in, only by ``synth``.
- CityScapes: ``leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png`` (RGB) and
  ``gtFine/<split>/<city>/<frame>_gtFine_labelIds.png`` with sky, building, vegetation, road,
  sidewalk, ego-vehicle and vehicles of labelIds 26-33.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import atomic_dir, atomic_path, atomic_write_text
from .layout import nnunet_layout_note, scan_cases, visible_entries
from .specs import get_spec

__all__ = [
    "ENSURE_DEFAULTS",
    "MARKER",
    "ensure_dataset",
    "synth",
    "synth_brats",
    "synth_cityscapes",
    "synth_isles",
    "synth_nnunet",
]

log = logging.getLogger(__name__)

MARKER = "synthetic.json"  # written at the root of a generated set with its parameters
VERSION = 1  # bump when the generators change, so ensure_dataset regenerates old stand-ins

# small sets for ensure_dataset: one epoch of 2-D training on 2 CPU cores in well under a minute
ENSURE_DEFAULTS = {
    "brats": {"cases": 5, "slices": 16},
    "isles": {"cases": 10, "max_slices": 6},
    "cityscapes": {"cases": 2},
}

# the real BraTS 2018 header: 1 mm isotropic, x and y flipped (LPS-like in RAS terms)
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def _fade(r: np.ndarray, edge: float = 0.8) -> np.ndarray:
    """Contrast profile of an object whose label covers ``r < 1``: 1 at its centre (r = 0),
    falling smoothly to 0 at ``r = edge`` and 0 beyond. The outer ``1 - edge`` of the radius is
    labelled but invisible, and the contrast before it is already below the noise: the fading
    periphery that a network leaves out."""
    return 0.5 * (1.0 + np.cos(np.pi * np.clip(r / edge, 0.0, 1.0)))


def _radius(
    grids: list[np.ndarray], centre, radii, rng: np.random.Generator, wobble: float = 0.15
) -> np.ndarray:
    """Normalised ellipsoidal distance (1 on the boundary) with a smooth irregular outline: the
    in-plane radius varies by ``wobble`` with the angle, in every axial slice alike."""
    in_plane = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip(grids[:2], centre[:2], radii[:2])))
    angle = np.arctan2(grids[1] - centre[1], grids[0] - centre[0])
    k, phase = rng.integers(2, 5), rng.uniform(0, 2 * np.pi)
    in_plane = in_plane * (1.0 + wobble * np.sin(k * angle + phase))
    return np.sqrt(in_plane**2 + ((grids[2] - centre[2]) / radii[2]) ** 2)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)  # 1: NIFTI_XFORM_SCANNER_ANAT
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    # atomically (``synth`` writes straight into its folder): a stopped run leaves no cut volume;
    # nibabel compresses by the name, so the temporary one keeps the ending
    with atomic_path(path, suffix=".nii" if path.name.endswith(".nii") else ".nii.gz") as tmp:
        nib.save(img, str(tmp))


def _save_png(image, path: Path) -> None:
    """Save a PIL ``image`` as ``path`` atomically, as :func:`_save_nifti` its volumes."""
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


# ----------------------------------------------------------------------------- BRATS
def _brats_case(
    rng: np.random.Generator, shape: tuple[int, int, int], enhancing: bool
) -> tuple[dict, np.ndarray]:
    nx, ny, nz = shape
    x, y, z = np.meshgrid(
        np.arange(nx, dtype=np.float32),
        np.arange(ny, dtype=np.float32),
        np.arange(nz, dtype=np.float32),
        indexing="ij",
    )
    brain_r = np.sqrt(
        ((x - nx / 2) / (0.36 * nx)) ** 2
        + ((y - ny / 2) / (0.42 * ny)) ** 2
        + ((z - (nz - 1) / 2) / max(0.55 * nz, 1.0)) ** 2
    )
    brain = brain_r < 1.0
    # tumour inside the 160 x 160 centre crop, away from the first and last slices
    centre = (rng.uniform(0.36, 0.64) * nx, rng.uniform(0.36, 0.64) * ny, rng.uniform(0.4, 0.6) * (nz - 1))
    rad = rng.uniform(18, 30)
    radii = (rad * rng.uniform(0.85, 1.15), rad * rng.uniform(0.85, 1.15), max(min(rad, 0.25 * nz), 2.0))
    r = _radius([x, y, z], centre, radii, rng)
    label = np.zeros(shape, np.uint8)
    label[(r < 1.0) & brain] = 2  # oedema
    if enhancing:
        label[(r < 0.6) & brain] = 4  # enhancing tumour, a ring ...
    label[(r < 0.3) & brain] = 1  # ... around the necrotic core
    oedema_c = 0.6 * _fade(r)
    ring_c = np.where(r < 0.3, 0.0, _fade((r - 0.3) / 0.3)) if enhancing else 0.0  # fades to 0 at r = 0.6
    core = (r < 0.3).astype(np.float32)
    texture = 0.08 * np.sin(x / 13.0 + rng.uniform(0, 6)) * np.cos(y / 17.0 + rng.uniform(0, 6))
    contrasts = {  # modality: (tissue level, extra contrast in the tumour)
        "flair": (300.0, oedema_c + 0.3 * core),
        "t1": (500.0, -0.15 * oedema_c - 0.3 * core),
        "t1ce": (550.0, 1.0 * ring_c - 0.4 * core),
        "t2": (400.0, 0.5 * oedema_c + 0.6 * core),
    }
    images = {}
    for name, (level, contrast) in contrasts.items():
        noise = rng.normal(0.0, 0.1, shape).astype(np.float32)
        v = level * (1.0 + texture + contrast + noise)
        images[name] = np.where(brain, np.clip(np.rint(v), 1, 32767), 0).astype(np.int16)
    return images, label


def synth_brats(
    output: str | os.PathLike, cases: int = 5, seed: int = 0, slices: int = 155, lgg_cases: int = 0
) -> Path:
    """Write ``cases`` HGG (and ``lgg_cases`` LGG) BRATS-like cases under ``output``."""
    from .brats import MODALITIES

    output = Path(output)
    shape = (240, 240, int(slices))
    for i in range(cases + lgg_cases):
        hgg = i < cases
        case = f"Brats18_SYN_{i + 1:03d}_1" if hgg else f"Brats18_SYNL_{i + 1 - cases:03d}_1"
        folder = output / ("HGG" if hgg else "LGG") / case
        images, label = _brats_case(np.random.default_rng([seed, 1, i]), shape, enhancing=hgg)
        for name in MODALITIES:
            _save_nifti(images[name], BRATS_AFFINE, folder / f"{case}_{name}.nii.gz")
        _save_nifti(
            label.astype(np.int16 if i % 2 == 0 else np.uint8), BRATS_AFFINE, folder / f"{case}_seg.nii.gz"
        )
    return output


# ----------------------------------------------------------------------------- ISLES
ISLES_SPACING = (0.9, 0.9, 5.0)


def _isles_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[dict, np.ndarray]:
    nx, ny, nz = shape
    x, y, z = np.meshgrid(
        np.arange(nx, dtype=np.float32),
        np.arange(ny, dtype=np.float32),
        np.arange(nz, dtype=np.float32),
        indexing="ij",
    )
    head_r = np.sqrt(((x - nx / 2) / 95.0) ** 2 + ((y - ny / 2) / 112.0) ** 2)
    brain, skull = head_r < 1.0, (head_r >= 1.0) & (head_r < 1.07)
    # lesion in one hemisphere, inside the 224 x 224 crop
    side = rng.choice([-1.0, 1.0])
    centre = (
        nx / 2 + side * rng.uniform(25, 55),
        ny / 2 + rng.uniform(-50, 50),
        rng.uniform(0.3, 0.7) * (nz - 1),
    )
    rad = rng.uniform(14, 30)
    radii = (rad * rng.uniform(0.8, 1.2), rad * rng.uniform(0.8, 1.2), max(0.4 * nz, 1.0))
    r = _radius([x, y, z], centre, radii, rng)
    lesion = (r < 1.0) & brain
    f = np.where(brain, _fade(r, edge=1.0), 0.0)
    maps = {  # MOD: (normal level, relative change at the lesion centre)
        "CT_CBF": (50.0, -0.8),
        "CT_CBV": (3.5, -0.7),
        "CT_MTT": (5.0, 1.2),
        "CT_Tmax": (1.5, 6.0),
    }
    out = {}
    for mod, (level, change) in maps.items():
        v = level * (1.0 + change * f + rng.normal(0.0, 0.1, shape))
        out[mod] = np.where(brain, np.maximum(v, 0.01 * level), 0.0).astype(np.float32)
    ct = np.where(brain, 35.0 + rng.normal(0.0, 4.0, shape) - 6.0 * f, np.where(skull, 1000.0, -1000.0))
    out["CT"] = np.rint(ct).astype(np.int16)
    t = np.arange(2, dtype=np.float32)
    out["CT_4DPWI"] = np.rint(
        out["CT"][..., None] + np.where(brain, 20.0 * (1.0 - f), 0.0)[..., None] * t
    ).astype(np.int16)
    return out, lesion.astype(np.uint8)


def synth_isles(
    output: str | os.PathLike, cases: int = 10, seed: int = 0, max_slices: int = 8, compress: bool = False
) -> Path:
    """Write ``cases`` ISLES-2018-like cases under ``output/TRAINING`` (2..``max_slices`` slices
    each; ``.nii`` as published, ``.nii.gz`` with ``compress``)."""
    output = Path(output)
    suffix = ".nii.gz" if compress else ".nii"
    affine = np.diag([*ISLES_SPACING, 1.0])
    affine[:3, 3] = [-115.0, -115.0, 0.0]
    for i in range(cases):
        rng = np.random.default_rng([seed, 2, i])
        n = int(rng.integers(2, max(int(max_slices), 2) + 1))
        volumes, lesion = _isles_case(rng, (256, 256, n))
        volumes["OT"] = lesion
        folder = output / "TRAINING" / f"case_{i + 1}"
        for k, mod in enumerate(("CT", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax", "CT_4DPWI", "OT")):
            name = f"SMIR.Brain.XX.O.{mod}.{345000 + 10 * (i + 1) + k}"
            _save_nifti(volumes[mod], affine, folder / name / f"{name}{suffix}")
    return output


# ----------------------------------------------------------------------------- CityScapes
TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt")
VAL_CITIES = ("frankfurt", "lindau", "munster")
_CLASS_COLOURS = {
    7: (128, 64, 128),
    8: (200, 170, 190),
    11: (110, 100, 95),
    21: (70, 130, 45),
    23: (120, 170, 230),
    1: (25, 25, 25),
}
_VEHICLE_IDS = (26, 26, 26, 27, 28, 32, 33)  # mostly cars; truck, bus, motorcycle, bicycle


def _cityscapes_frame(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    width, height = size
    yy, xx = np.meshgrid(
        np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij"
    )
    horizon = rng.uniform(0.42, 0.52) * height
    skyline = 0.3 * height + 0.08 * height * np.sin(xx / rng.uniform(15, 40) + rng.uniform(0, 6))
    label = np.full((height, width), 7, np.uint8)  # road
    label[yy < horizon] = 11  # building
    label[(yy < horizon) & (np.sin(xx / rng.uniform(20, 50)) > 0.6)] = 21  # vegetation
    label[yy < skyline] = 23  # sky
    road_edge = 0.15 * width * (1.0 - (yy - horizon) / (height - horizon))
    label[(yy >= horizon) & ((xx < road_edge) | (xx > width - road_edge))] = 8  # sidewalk
    label[yy >= 0.94 * height] = 1  # ego vehicle
    image = np.zeros((height, width, 3), np.float32)
    for cid, colour in _CLASS_COLOURS.items():
        image[label == cid] = colour
    n_vehicles = 0 if rng.uniform() < 0.2 else int(rng.integers(1, 5))
    centres = sorted(
        (
            (rng.uniform(0.1, 0.9) * width, rng.uniform(horizon + 0.05 * height, 0.85 * height))
            for _ in range(n_vehicles)
        ),
        key=lambda c: c[1],
    )
    for cx, cy in centres:  # far to near: nearer vehicles occlude
        w = (0.05 + 0.2 * (cy - horizon) / (height - horizon)) * width
        h = w * rng.uniform(0.45, 0.7)
        r = (np.abs((xx - cx) / (w / 2)) ** 4 + np.abs((yy - cy) / (h / 2)) ** 4) ** 0.25
        inside = (r < 1.0) & (yy < 0.94 * height)
        alpha = _fade(r)[..., None]  # the body blends into the road towards its outline
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        image = np.where(inside[..., None], alpha * colour + (1 - alpha) * image, image)
        label[inside] = rng.choice(_VEHICLE_IDS)
    image += rng.normal(0.0, 8.0, image.shape)
    label[-1, :] = 0  # a row of 'unlabeled', as real frames have at their border
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def synth_cityscapes(
    output: str | os.PathLike,
    cases: int = 2,
    seed: int = 0,
    size: tuple[int, int] = (512, 256),
    train_cities: int = 3,
    val_cities: int = 1,
) -> Path:
    """Write ``cases`` frames per city of ``train_cities`` 'train' and ``val_cities`` 'val'
    cities under ``output`` (frames of ``size`` = width x height; the real ones are 2048 x 1024)."""
    from PIL import Image

    output = Path(output)
    if not 2 <= train_cities <= len(TRAIN_CITIES) or not 1 <= val_cities <= len(VAL_CITIES):
        raise ValueError(f"train_cities in 2..{len(TRAIN_CITIES)}, val_cities in 1..{len(VAL_CITIES)}")
    cities = [("train", c) for c in TRAIN_CITIES[:train_cities]] + [
        ("val", c) for c in VAL_CITIES[:val_cities]
    ]
    k = 0
    for split, city in cities:
        for j in range(cases):
            image, label = _cityscapes_frame(np.random.default_rng([seed, 3, k]), tuple(size))
            k += 1
            frame = f"{city}_{j:06d}_000019"
            for sub, suffix, array in (
                ("leftImg8bit", "_leftImg8bit.png", image),
                ("gtFine", "_gtFine_labelIds.png", label),
            ):
                _save_png(Image.fromarray(array), output / sub / split / city / f"{frame}{suffix}")
    return output


# ----------------------------------------------------------------------------- own data (nnU-Net)
def _hounsfield(t2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A CT-like int16 volume from the BRATS generator's t2 (tissue level 400): 0.1 HU per unit
    inside the body, air (-1000 HU) with scanner noise outside."""
    body = t2 > 0
    air = rng.normal(-1000.0, 8.0, t2.shape)
    return np.rint(np.where(body, 0.1 * t2.astype(np.float32), air)).astype(np.int16)


def _synth_nnunet_2d(output: Path, cases: int, seed: int, size: tuple[int, int], test_cases: int) -> Path:
    from PIL import Image

    for i in range(cases + test_cases):
        rng = np.random.default_rng([seed, 6, i])
        h, w = (int(v) + int(rng.integers(-8, 9)) for v in size)  # sizes differ, as photographs do
        y, x = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        centre = (rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w)
        radii = (rng.uniform(0.12, 0.25) * h, rng.uniform(0.12, 0.25) * w)
        r = _radius([y, x, np.zeros_like(y)], (*centre, 0.0), (*radii, 1.0), rng)
        skin = np.array([200.0, 150.0, 120.0]) * (1 + 0.05 * np.sin(x / 9.0 + rng.uniform(0, 6)))[..., None]
        lesion = np.array([90.0, 50.0, 40.0])
        weight = _fade(r)[..., None]
        rgb = skin * (1 - weight) + lesion * weight + rng.normal(0, 6, (h, w, 3))
        case, subset = f"SYN_{i + 1:03d}", "imagesTr" if i < cases else "imagesTs"
        photo = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")
        _save_png(photo, output / subset / f"{case}_0000.png")
        if i < cases:
            _save_png(Image.fromarray((r < 1.0).astype(np.uint8), "L"), output / "labelsTr" / f"{case}.png")
    meta = {
        "name": "Dataset902_SyntheticLesion2D",
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": cases,
        "file_ending": ".png",
    }
    atomic_write_text(output / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return output


SPARSE_IGNORE = 4  # the 'ignore' label of synth_nnunet(sparse=True)


def synth_nnunet(
    output: str | os.PathLike,
    cases: int = 6,
    seed: int = 0,
    size: tuple[int, int] = (90, 84),
    slices: int = 12,
    test_cases: int = 1,
    ct: bool = False,
    two_d: bool = False,
    sparse: bool = False,
) -> Path:
    """Write ``cases`` training cases (and ``test_cases`` unlabelled ones in ``imagesTs``) in the
    nnU-Net v2 raw layout: two channels ("T2", "ADC", from the BRATS generator's t2 and t1), labels
    background 0, necrosis 1, oedema 2, enhancing 3 and the region "tumour core" [1, 3]. Its
    in-plane size is not a multiple of 16, so the default crop pads. ``ct``: one "CT" channel in
    Hounsfield units instead (air -1000 around a soft-tissue body of about 40 HU, the lesion
    brighter), which is normalised with the training set's statistics. ``two_d``: 2-D colour images
    instead (``<case>_0000.png`` holding channels R, G, B, sizes around ``size``; labels background 0,
    lesion 1), as nnU-Net keeps natural images. ``sparse``: sparse annotations, the label "ignore"
    (4) on every odd slice and on the first 20 rows of the others (volumes only)."""
    output = Path(output)
    if two_d:
        if sparse:
            raise ValueError("synth: sparse annotations are written for volumes only")
        return _synth_nnunet_2d(output, cases, seed, size, test_cases)
    shape = (int(size[0]), int(size[1]), int(slices))
    affine = np.diag([1.2, 1.2, 3.0, 1.0])
    for i in range(cases + test_cases):
        case = f"SYN_{i + 1:03d}"
        images, label = _brats_case(np.random.default_rng([seed, 4, i]), shape, enhancing=True)
        subset = "imagesTr" if i < cases else "imagesTs"
        if ct:
            images = {"ct": _hounsfield(images["t2"], np.random.default_rng([seed, 5, i]))}
        for c, name in enumerate(("ct",) if ct else ("t2", "t1")):
            _save_nifti(images[name], affine, output / subset / f"{case}_{c:04d}.nii.gz")
        if i < cases:
            label = np.where(label == 4, 3, label).astype(np.uint8)
            if sparse:
                label[..., 1::2] = SPARSE_IGNORE
                label[:20] = SPARSE_IGNORE
            _save_nifti(label, affine, output / "labelsTr" / f"{case}.nii.gz")
    meta = {
        "name": "Dataset900_SyntheticTumour",
        "channel_names": {"0": "CT"} if ct else {"0": "T2", "1": "ADC"},
        "labels": {"background": 0, "necrosis": 1, "oedema": 2, "enhancing": 3, "tumour core": [1, 3]},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    if sparse:
        meta["labels"]["ignore"] = SPARSE_IGNORE
    atomic_write_text(output / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return output


# ----------------------------------------------------------------------------- entry points
def synth(
    dataset: str, output: str | os.PathLike, cases: int | None = None, seed: int = 0, **options
) -> Path:
    """Write a synthetic ``dataset`` into ``output`` (see the module docstring; ``cases`` defaults
    to 5 BRATS cases, 10 ISLES cases, 2 CityScapes frames per city, 6 own-data cases)."""
    generators = {
        "brats": synth_brats,
        "isles": synth_isles,
        "cityscapes": synth_cityscapes,
        "nnunet": synth_nnunet,
    }
    if str(dataset).lower() not in generators:
        get_spec(dataset)  # names the known data sets
    gen = generators[str(dataset).lower()]
    if cases is not None:
        options["cases"] = int(cases)
    return gen(output, seed=seed, **options)


def _has_cases(dataset, root: Path) -> bool:
    return root.is_dir() and any(c.complete for c in scan_cases(dataset, root).cases)


def _refuse_foreign_folder(dataset: str, dataset_dir: Path, target: Path) -> None:
    """Raise when ``dataset_dir`` holds anything besides the stand-in's own folder (hidden files
    such as ``.DS_Store`` aside)."""
    foreign = [p.name for p in visible_entries(dataset_dir) if p.resolve() != target.resolve()]
    if not foreign:
        return
    problems = [str(p) for p in scan_cases(dataset, dataset_dir).problems][:5]
    note = nnunet_layout_note(dataset, dataset_dir)  # read last, where the eye lands
    raise ValueError(
        f"{dataset}: {dataset_dir} holds {len(foreign)} entries ({', '.join(foreign[:5])}"
        f"{', ...' if len(foreign) > 5 else ''}) but no complete case in the published {dataset} layout "
        "(see pam_monai/data/README.md; `python -m pam_monai check` lists every problem):\n"
        + "\n".join(problems)
        + "\nPoint dataset_dir at the data set's root (own data in another layout: the nnU-Net raw layout, "
        "--task nnunet); a synthetic stand-in is used only when dataset_dir is left at the bundle's own data/ "
        "(a --dataset_dir that is missing or empty is refused)" + (f"\n{note}" if note else "")
    )


def ensure_dataset(
    dataset: str,
    dataset_dir: str | os.PathLike,
    cases: int | None = None,
    seed: int = 0,
    output: str | os.PathLike | None = None,
    **options,
) -> tuple[Path, bool]:
    """Return ``(root, synthetic)``: ``dataset_dir`` itself when it holds the data set (at least
    one complete case), else, when ``dataset_dir`` does not exist or is empty, a synthetic stand-in,
    generated once into ``output`` (default ``<dataset_dir>/synthetic_<dataset>``) and reused while
    its parameters are unchanged.

    A ``dataset_dir`` that holds files but no case in the published layout (someone's own data,
    a wrong sub-folder) is an error that names the expected layout: training on a stand-in
    instead would succeed silently on the wrong data.

    Small by default (``ENSURE_DEFAULTS``, e.g. 5 BRATS cases of 240 x 240 x 16) so that an
    epoch of 2-D training takes seconds on a CPU. A WARNING is logged whenever synthetic data is
    used. Generation goes to a temporary folder renamed into place, so an interrupted run never
    leaves a half-written stand-in.
    """
    spec = get_spec(dataset, root=dataset_dir)
    dataset_dir = Path(dataset_dir)
    if _has_cases(spec, dataset_dir):
        synthetic = (dataset_dir / MARKER).is_file()
        if synthetic:
            log.warning(
                "%s: %s holds SYNTHETIC data (see %s); results say nothing about the real data set",
                spec.name,
                dataset_dir,
                MARKER,
            )
        return dataset_dir, synthetic
    if spec.name not in ENSURE_DEFAULTS:  # own data: never a stand-in
        if not dataset_dir.is_dir():  # an own-data bundle carries its spec: nothing read the folder yet
            raise FileNotFoundError(
                f"{spec.name}: dataset_dir {dataset_dir} does not exist: pass the folder of your data set "
                "(dataset.json, imagesTr/, labelsTr/) as --dataset_dir (a typo? a disk not mounted?)"
            )
        problems = "\n".join(str(p) for p in scan_cases(spec, dataset_dir).problems[:5])
        raise ValueError(f"{spec.name}: no complete case in {dataset_dir}:\n{problems}")
    target = Path(output) if output is not None else dataset_dir / f"synthetic_{spec.name}"
    _refuse_foreign_folder(spec.name, dataset_dir, target)
    opts = {**ENSURE_DEFAULTS[spec.name], **options}
    if cases is not None:
        opts["cases"] = int(cases)
    params = {"dataset": spec.name, "seed": int(seed), "options": opts, "version": VERSION}
    marker = target / MARKER
    if (
        marker.is_file()
        and json.loads(marker.read_text(encoding="utf-8")) == params
        and _has_cases(spec.name, target)
    ):
        log.warning(
            "%s: no data set in %s; using the SYNTHETIC stand-in in %s; results say nothing about real data",
            spec.name,
            dataset_dir,
            target,
        )
        return target, True
    if target.exists() and not marker.is_file() and any(target.iterdir()):
        raise FileExistsError(
            f"{target} exists, holds no {spec.name} cases and was not generated here; remove it or pass output="
        )
    with atomic_dir(target, replace=True) as tmp:
        synth(spec.name, tmp, seed=seed, **opts)
        (tmp / MARKER).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    log.warning(
        "%s: no data set in %s; generated a SYNTHETIC stand-in in %s (%s); results say nothing about real data",
        spec.name,
        dataset_dir,
        target,
        opts,
    )
    return target, True
