"""Data for the bundles' workflows: find (or synthesise) the data set, split it, and serve
whole preprocessed cases to evaluators and inference.

Training reads 2-D slices from :class:`pam_monai.data.SliceDataset`; validation, evaluation and
inference work per CASE (a whole volume, predicted slice by slice), so that every metric is an
honest per-case metric in physical units.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data import (
    build_datalist,
    ensure_dataset,
    get_spec,
    get_split,
    load_case,
    load_datalist,
    preprocess_case,
)
from ..data.files import voxel_spacing
from ..data.layout import visible_entries
from ..data.nnunet import check_same_data_set
from ..data.ops import binarize, resize_probabilities, uncrop_center
from ..data.preprocess import case_name
from ..data.slices import data_argument
from ..ranks import on_rank0, rank0_first
from .flags import as_bool

__all__ = ["CaseDataset", "evaluation_grid", "on_case_grid", "prepare_data", "voxel_spacing"]

log = logging.getLogger("pam_monai")


def prepare_data(
    dataset,
    dataset_dir: str | os.PathLike,
    data_list_file_path: str | os.PathLike | None = None,
    fold: int = 0,
    synthetic_dir: str | os.PathLike | None = None,
    seed: int = 0,
    check: bool = True,
    splits: Sequence[str] = ("train", "val", "test"),
    foreground_label: int | Sequence[int] | None = None,
    stand_in: bool = True,
) -> dict:
    """Locate the data set, build or read its datalist, and return its three splits.

    Args:
        dataset: "brats", "isles", "cityscapes", "nnunet" (own data in the nnU-Net v2 raw layout,
            never replaced by a stand-in) or a :class:`~pam_monai.data.DatasetSpec`.
        dataset_dir: the folder the challenge's download was unpacked into. When it does not exist
            or is empty, a small SYNTHETIC stand-in is generated (into ``synthetic_dir``, default
            ``<dataset_dir>/synthetic_<dataset>``) and a warning says so; a folder with other
            content than the published layout is an error (:func:`pam_monai.data.ensure_dataset`).
        data_list_file_path: a decathlon-format datalist (paths relative to ``dataset_dir``) of
            cases in the published layout; empty: built from the cases found in ``dataset_dir``.
            For BRATS and own data, one whose training entries have no ``fold`` and which has a
            ``validation`` list is a split of the user's own, used as written (``fold`` 0).
            A path that does not exist, or a datalist with a synthetic stand-in, is an error.
        fold: the BRATS cross-validation fold (test = ``fold``, validation = ``fold + 1``).
        synthetic_dir: where a synthetic stand-in goes.
        seed: seed of the synthetic stand-in and of the datalist's split.
        check: validate every case with :func:`pam_monai.data.check_dataset` before any work and
            refuse with one list of all problems (those of the datalist's entries too: a wrong
            channel count, a missing file). Of a datalist, the files and labels are checked of the
            entries the run reads only: those of ``splits`` of ``fold``, but not the test split's
            when training (``"train"`` in ``splits``: training never reads it, and the evaluation
            that does checks it), so a data set holding only the evaluated fold's cases, or a test
            list without labels kept for inference, will do; a fold missing or out of range and a
            case listed twice are named for every entry. Under ``torch.distributed`` rank 0 checks
            (and makes a stand-in) while the others wait, so every rank must call this.
        splits: the splits that must hold cases (evaluation needs only its own, so a datalist of
            an external test set with a ``test`` list alone will do); the others may be empty.
        foreground_label: BRATS: the enhancing tumour's label, 4 (2018, default) or 3 (BraTS
            2021+); the check then accepts that year's label set.
        stand_in: whether a missing or empty ``dataset_dir`` may be replaced by the stand-in (the
            bundles: only their default ``<bundle_root>/data``; a ``--dataset_dir`` naming a missing
            or empty folder is a typo or an unmounted disk, refused before any training).

    Returns:
        ``{"root": Path, "synthetic": bool, "datalist": dict, "train": [...], "val": [...], "test": [...]}``
        with absolute paths in every item.
    """
    spec = get_spec(dataset, root=dataset_dir)
    path = Path(data_list_file_path) if data_list_file_path else None
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"{spec.name}: datalist {path} not found (data_list_file_path)")
    if path is not None and not Path(dataset_dir).is_dir():  # refuse before generating a stand-in
        raise ValueError(
            f"{spec.name}: datalist {path} given, but dataset_dir {dataset_dir} does not exist; set dataset_dir "
            "to the folder its paths are relative to"
        )
    if not as_bool(stand_in) and spec.name != "nnunet" and not visible_entries(Path(dataset_dir)):
        raise FileNotFoundError(
            f"{spec.name}: dataset_dir {dataset_dir} "
            + ("is empty" if Path(dataset_dir).is_dir() else "does not exist")
            + ": pass the folder of the published layout (a typo? a disk not mounted?), or leave dataset_dir "
            "out to run on a synthetic stand-in"
        )
    # ensure_dataset says, in one WARNING, that the data are a stand-in and what results are worth
    root, synthetic = rank0_first(lambda: ensure_dataset(spec, dataset_dir, seed=seed, output=synthetic_dir))
    # a stand-in because dataset_dir held nothing (not a stand-in that dataset_dir points at)
    fallback = synthetic and Path(root).resolve() != Path(dataset_dir).resolve()
    if fallback and path is not None:
        raise ValueError(
            f"{spec.name}: datalist {path} given, but {dataset_dir} holds no data set (a synthetic "
            "stand-in would ignore the datalist); set dataset_dir to the folder its paths are relative to"
        )
    check_same_data_set(spec, root)
    unknown = set(splits) - {"train", "val", "test"}
    if unknown:
        raise ValueError(  # evaluation's --eval_split is the one split a user names
            f"splits must be among 'train', 'val', 'test', got {sorted(unknown)}: pass --eval_split test, val or "
            "train"
        )
    # first: one list of every problem, the layout's (files, names) and the contents' alike
    if as_bool(check):
        from ..data import check_dataset

        read = [s for s in splits if s != "test" or "train" not in splits]  # training never reads test

        def checked() -> None:
            report = check_dataset(
                spec, root, foreground_label, progress=True, datalist=path, datalist_splits=read, fold=fold
            )
            report.raise_if_failed()
            report.log(log)  # what check prints beside the table: spacings, orientations, warnings

        on_rank0(checked)  # torchrun: rank 0 reads every volume once, every rank refuses alike
    if path is not None:
        datalist = load_datalist(path, root)
    else:
        # evaluation reads its test split alone (CityScapes: the 'val' frames, without 'train' ones)
        training = bool({"train", "val"} & set(splits))
        datalist = load_datalist(build_datalist(spec, root, seed=seed, training=training), root)
    result = {}
    for name in ("train", "val", "test"):
        try:
            result[name] = get_split(spec, datalist, name, fold=fold)
        except ValueError as e:  # e.g. a datalist without that list
            if name in splits and path is not None:  # name the file: get_split has only its contents
                raise ValueError(f"{e} (data_list_file_path {path})") from e
            if name in splits:
                raise
            result[name] = []
        if name in splits and not result[name]:
            where = path or root
            entries = datalist.get("training", []) if isinstance(datalist, dict) else []
            folds = sorted(
                {e.get("fold") for e in entries if isinstance(e, dict) and e.get("fold") is not None}
            )
            hint = ""
            if folds:
                hint = (
                    f": {len(entries)} case(s) in folds {folds} (fold k: test = k, validation = k + 1, training = "
                    "the others), so a case is needed in each; pass a datalist with a `fold` per case "
                    "(data_list_file_path) to choose the splits yourself"
                )
            raise ValueError(f"{spec.name}: the {name} split of fold {fold} is empty ({where}){hint}")
    held_out = datalist.get("val_city") if isinstance(datalist, dict) else None
    city = f" (validation: the held-out city {held_out})" if held_out and "val" in splits else ""
    log.info(
        "%s: %s train / %s val / %s test cases%s from %s", spec.name, *map(len, result.values()), city, root
    )
    return {"root": Path(root), "synthetic": synthetic, "datalist": datalist, **result}


def on_case_grid(
    pred: np.ndarray, label: np.ndarray, label_full=None, restore: str = "crop", threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, label)`` to score: with a :class:`CaseDataset` ``label_full`` (the case's own grid,
    optionally with a leading channel axis), the prediction put back into that grid and that
    label; else both unchanged. ``restore``: ``"crop"`` (zeros outside the centre crop) or
    ``"resize"`` (own 2-D images). For ``"resize"`` a ``pred`` already on the image's pixels is
    scored as it is (the bundles' :class:`~pam_monai.engines.ForegroundMaskd` cut it there, as
    inference does); one on the network's grid is taken as foreground probabilities, resized
    bilinearly and cut at ``threshold`` on the image's pixels (:func:`pam_monai.data.restore_mask`;
    a 0/1 mask cut on the small grid would come back with the resize's steps: pass probabilities)."""
    if label_full is None:
        return pred, label
    full = np.asarray(label_full.cpu() if isinstance(label_full, torch.Tensor) else label_full)
    full = full.reshape(full.shape[-pred.ndim :])  # 0/1, and IGNORE on unannotated voxels
    if restore == "resize":
        if tuple(pred.shape) == tuple(full.shape):
            return pred, full
        back = resize_probabilities(pred, full.shape[-2:])  # a leading channel axis kept
        return (back > threshold).astype(pred.dtype), full
    return uncrop_center(pred, full.shape), full


def evaluation_grid(spec) -> str | list[int]:
    """The grid a bundle's evaluation scores ``spec``'s cases on: ``"labels"`` (each label's own
    pixels or voxels: volumes put back from the crop, own 2-D images resized back), or the
    network's ``[height, width]`` (CityScapes: the paper's 128 x 256). ``score`` always scores
    the labels' own grid; ``compare`` refuses folders scored on different grids."""
    if spec.volumetric or spec.name == "nnunet":
        return "labels"
    return [int(v) for v in spec.spatial_size]


class CaseDataset(torch.utils.data.Dataset):
    """Whole preprocessed cases: ``image`` (``C x H x W x D``, or ``C x H x W`` for CityScapes),
    ``label`` (``1 x ...`` in {0, 1}, when the item has one), ``case``, ``spacing`` (per axis, mm)
    and ``index`` (position in ``data``, to map a prediction back to its input files).

    BRATS / ISLES cases whose grid the centre crop (or pad) changed also carry ``label_full``
    (``1 x`` the case's own grid, uint8): :class:`~pam_monai.engines.CaseMetrics` scores the
    prediction there, put back in place, so foreground outside the crop counts as missed and
    rates and distances refer to the image as acquired, not to the network's crop. Own 2-D
    images that were resized carry it too, with ``restore`` = ``"resize"``: the bundles'
    post-processing (:class:`~pam_monai.engines.ForegroundMaskd`) resizes the foreground
    probabilities bilinearly to the image's pixels and cuts them there, as inference writes its
    masks, and the mask is scored on those pixels. (CityScapes is scored on the 128 x 256 grid,
    as the paper does.)

    Cases are preprocessed on first access and kept (``cache=True``): a validation set is read
    once per training run, not once per epoch, and held in memory (~88 MB per full-size BraTS case:
    3.7 GB for a 42-case fold). A single pass (evaluation, the bundles' evaluate.json) passes
    ``cache=False``: memory stays one case.
    """

    def __init__(
        self,
        data: Sequence[dict] | None = None,
        dataset="brats",
        foreground_label: int | Sequence[int] | None = None,
        cache: bool = True,
        items: Sequence[dict] | None = None,
    ) -> None:
        # ``data`` as MONAI's datasets name it: the bundles' ``validate#dataset#data``
        self.items = [dict(it) for it in data_argument(data, items, type(self).__name__)]
        self.spec = get_spec(dataset)
        self.foreground_label = foreground_label
        # as_bool: --validate#dataset#cache false arrives as the string "false", which is truthy
        self._cache: dict[int, dict] = {} if as_bool(cache) else None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.items)

    def case_id(self, index: int) -> str:
        """The ``case`` of sample ``index``, from its datalist entry (no file is read)."""
        return case_name(self.items[index])

    def __getitem__(self, index: int) -> dict:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        loaded = load_case(self.spec, self.items[index])
        # own volumes larger than the crop are segmented whole (a sliding window of the crop)
        case = preprocess_case(
            self.spec, loaded, self.foreground_label, whole=self.spec.inference_fit == "pad"
        )
        ndim = case["image"].ndim - 1
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(case["image"], dtype=np.float32)),
            "case": case["case"],
            "spacing": torch.tensor(voxel_spacing(case["affine"], ndim), dtype=torch.float64),
            "index": index,
        }
        if case["label"] is not None:
            out["label"] = torch.from_numpy(np.ascontiguousarray(case["label"], dtype=np.float32))
            resized = self.spec.name == "nnunet" and not self.spec.volumetric  # own 2-D images
            if evaluation_grid(self.spec) == "labels" and tuple(loaded["label"].shape) != tuple(
                case["label"].shape[1:]
            ):
                full = binarize(loaded["label"], case["foreground_labels"], self.spec.ignore_label)
                out["label_full"] = torch.from_numpy(full[None])
                out["restore"] = "resize" if resized else "crop"
        if self._cache is not None:
            self._cache[index] = out
        return out
