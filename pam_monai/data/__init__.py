"""Data: BRATS 2018, ISLES 2018 and CityScapes readers, own data in the nnU-Net v2 raw layout
(``nnunet_spec``), datalists and splits, the paper's preprocessing (numpy and MONAI), a cached 2-D
slice dataset, synthetic stand-ins and a checker.

See ``pam_monai/data/README.md`` for channel orders, splits and cache costs.
"""

from .checker import CaseSummary, CheckReport, check_dataset
from .datalist import build_datalist, get_split, load_datalist, write_datalist
from .layout import CaseFiles, Problem, discover_cases, scan_cases
from .nnunet import nnunet_spec
from .ops import crop_or_pad_center, normalize_nonzero, random_flip_batch, uncrop_center
from .preprocess import load_case, preprocess_case, restore_mask, restore_prediction
from .slices import SliceDataset, seed_worker_transform, transform_seed
from .specs import DATASETS, DatasetSpec, get_spec
from .synthetic import ensure_dataset, synth

# MONAI transforms load on first use: importing MONAI takes seconds, which the data commands
# (check, datalist, synth) and the slice dataset do not need
_MONAI = (
    "BinarizeLabeld",
    "CenterCropOrPadd",
    "NormalizeChannelsd",
    "NormalizeNonZerod",
    "get_preprocess_transforms",
    "get_train_transforms",
)


def __getattr__(name: str):
    if name in _MONAI:
        from . import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "BinarizeLabeld",
    "CaseFiles",
    "CaseSummary",
    "CenterCropOrPadd",
    "CheckReport",
    "DatasetSpec",
    "NormalizeChannelsd",
    "NormalizeNonZerod",
    "Problem",
    "SliceDataset",
    "seed_worker_transform",
    "transform_seed",
    "build_datalist",
    "check_dataset",
    "crop_or_pad_center",
    "discover_cases",
    "ensure_dataset",
    "get_preprocess_transforms",
    "get_spec",
    "get_split",
    "get_train_transforms",
    "load_case",
    "load_datalist",
    "nnunet_spec",
    "normalize_nonzero",
    "preprocess_case",
    "random_flip_batch",
    "restore_mask",
    "restore_prediction",
    "scan_cases",
    "synth",
    "uncrop_center",
    "write_datalist",
]
