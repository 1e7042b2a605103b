"""Command-line entry points (``python -m pam_monai datalist|synth|check|convert_msd|convert_folders|convert_dicom|
convert_isles22``,
run by Python Fire)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..shell import quote


def datalist(
    dataset: str,
    output: str,
    root: str | None = None,
    case_ids: str | None = None,
    seed: int = 0,
    n_folds: int = 5,
    grades: str = "HGG",
    val_city: str | None = None,
    skip_incomplete: bool = False,
) -> None:
    """Write a decathlon-format datalist (paths relative to ROOT) with the paper's split.

    Args:
        dataset: brats, isles, cityscapes or nnunet (own data in the nnU-Net v2 raw layout).
        output: the JSON file to write.
        root: the data root in the published layout.
        case_ids: BRATS only, instead of --root: a '<GRADE> <case ID>' text file.
        seed: seed of the split.
        n_folds: cross-validation folds (BRATS and own data).
        grades: BRATS grades, "HGG" or "HGG,LGG".
        val_city: CityScapes train city held out for validation (default: chosen by the seed).
        skip_incomplete: leave incomplete cases out instead of failing.
    """
    from .datalist import build_datalist, write_datalist

    # Fire turns an all-digit folder name (a study date, 20240101) into a number
    root, output = (None if root is None else str(root)), str(output)
    if Path(output).is_dir():  # `datalist nnunet ROOT OUT.json`: the data root given as OUTPUT
        raise ValueError(
            f"datalist: OUTPUT {output} is a folder (the data root?), and the datalist is a JSON file: "
            f"python -m pam_monai datalist {dataset} OUT.json --root {output}"
        )
    data = build_datalist(
        dataset,
        root,
        seed=seed,
        n_folds=n_folds,
        grades=grades,
        case_ids=case_ids,
        val_city=val_city,
        skip_incomplete=skip_incomplete,
    )
    path = write_datalist(data, output)
    counts = ", ".join(f"{k} {len(data[k])}" for k in ("training", "validation", "test") if k in data)
    print(f"wrote {path}: {data['dataset']} ({counts}; {data['split']}, seed {seed})")
    _warn_empty_folds(data)
    left_out = data.get("left_out_incomplete")
    if left_out:
        print(f"left out {len(left_out)} incomplete case(s) (--skip_incomplete): {', '.join(left_out)}")


def _warn_empty_folds(data: dict) -> None:
    """Say so when a cross-validation datalist has fewer cases than folds: the runs on its empty
    folds would be tested or validated on no case (check warned about such a list and said to
    rebuild it with this command, which wrote it)."""
    n_folds, cases = data.get("n_folds"), len(data.get("training", []))
    if n_folds is None or cases >= n_folds:
        return
    empty = ", ".join(str(f) for f in range(cases, n_folds))
    fix = f"pass --n_folds {cases}" if cases >= 3 else "cross-validation needs 3 cases at least"
    print(
        f"WARNING: {cases} case(s) for {n_folds} folds: fold(s) {empty} hold no case, and the runs on them would be "
        f"tested or validated on none; {fix}"
    )


def synth(
    dataset: str, output: str, cases: int | None = None, seed: int = 0, overwrite: bool = False, **options
) -> None:
    """Write a small synthetic data set in the published layout (deterministic for a seed).

    Args:
        dataset: brats, isles, cityscapes or nnunet (own data: the nnU-Net v2 raw layout).
        output: the data root to create.
        cases: cases (default 5 for BRATS, 10 for ISLES, 6 for own data) or CityScapes frames per city (default 2).
        seed: random seed.
        overwrite: write into a folder that already holds files (its cases of the same names are
            replaced); refused by default.
        options: brats --slices (155) --lgg_cases (0); isles --max_slices (8) --compress;
            cityscapes --size "(512,256)" (width, height) --train_cities (3) --val_cities (1); nnunet
            --size "(90,84)" (height, width) --slices (12) --test_cases (1), and --ct (one CT channel in
            Hounsfield units) or --two_d (2-D colour PNG images, label lesion); --sparse (sparse
            annotations, the 'ignore' label 4 on every odd slice and the first 20 rows of the others).
    """

    from ..atomic import atomic_write_text
    from .layout import visible_entries
    from .synthetic import MARKER
    from .synthetic import synth as generate

    output = str(output)  # an all-digit folder name arrives as a number from Fire
    if cases is not None and int(cases) < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    if not overwrite and visible_entries(Path(output)):
        raise FileExistsError(f"{output} already holds files; choose an empty folder or pass --overwrite")
    # marked as synthetic, so that training, evaluation and the experiment tables say so; the
    # marker goes first (atomically), so that an interrupted run never leaves unmarked cases that
    # would later pass for real data
    params = {
        "dataset": dataset,
        "seed": int(seed),
        "cases": cases,
        "options": options,
        "source": "pam_monai synth",
    }
    atomic_write_text(Path(output) / MARKER, json.dumps(params, indent=2, default=str) + "\n")
    path = generate(dataset, output, cases=cases, seed=seed, **options)
    print(f"wrote synthetic {dataset} to {path} (marked SYNTHETIC by {MARKER})")


def convert_msd(task_dir: str, output: str) -> None:
    """Convert a Medical Segmentation Decathlon task (e.g. Task01_BrainTumour, as monai.apps.DecathlonDataset
    downloads it) into the nnU-Net v2 raw layout that --dataset nnunet and the bundles' --task nnunet read.

    Args:
        task_dir: the MSD task folder (dataset.json, imagesTr/, labelsTr/, imagesTs/).
        output: the new data set folder (must not exist).
    """
    from .msd import convert_msd as convert

    path = convert(str(task_dir), str(output))
    meta = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
    print(
        f"wrote {path}: {meta['numTraining']} training cases, channels {', '.join(meta['channel_names'].values())}, "
        f"labels {meta['labels']}; next: python -m pam_monai check --dataset nnunet --root {quote(str(path))}"
    )


def convert_folders(
    images: str,
    output: str,
    labels: str | None = None,
    channel_names=None,
    label_names=None,
    label_suffix: str | None = None,
    image_suffix: str | None = None,
    test_images: bool = False,
) -> None:
    """Convert plain folders of images and labels (images/<case>.nii.gz and labels/<case>.nii.gz, or one folder of
    <case>_img / <case>_seg pairs) into the nnU-Net v2 raw layout that --dataset nnunet and --task nnunet read.

    Args:
        images: the folder of images, one file per case: a 3-D NIfTI, a 4-D NIfTI (channels last), a 3-D
            one-channel MetaImage / NRRD (.mha, .nrrd, copied as they are) or a 2-D PNG / BMP / TIFF (grey, or
            colour for three channels).
        output: the new data set folder (must not exist).
        labels: the folder of label maps, named as the images (a suffix such as _seg, _label, _mask, _msk is found by
            itself); without it, IMAGES holds both.
        channel_names: the channels' names, e.g. "['T1', 'T2']" (default image; R, G, B; channel_<n>); CT as a
            name gives CT normalisation.
        label_names: the label values' names in value order, e.g. "['lesion']" or "{1: 'lesion'}" (default
            background, label_<value>).
        label_suffix: what the label files add to the case name (default: found among _seg, _label, _mask, _msk, ...).
        image_suffix: what the image files add to the case name (default: found among _img, _image, ...).
        test_images: put images without a label into imagesTs (inference) instead of refusing them.
    """
    from ..engines.flags import as_bool
    from .folders import convert_folders as convert

    # str(): Fire turns an all-digit folder name (a study date, 20240101) into a number
    path = convert(
        str(images),
        str(output),
        None if labels is None else str(labels),
        channel_names=channel_names,
        label_names=label_names,
        label_suffix=None if label_suffix is None else str(label_suffix),
        image_suffix=None if image_suffix is None else str(image_suffix),
        test_images=as_bool(test_images),
    )
    meta = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
    tests = len(list((path / "imagesTs").iterdir())) if (path / "imagesTs").is_dir() else 0
    print(
        f"wrote {path}: {meta['numTraining']} training cases{f', {tests} test image file(s)' if tests else ''}, "
        f"channels {', '.join(meta['channel_names'].values())}, labels {meta['labels']}; next: python -m pam_monai "
        f"check --dataset nnunet --root {quote(str(path))}, then train with --task nnunet --dataset_dir "
        f"{quote(str(path))}"
    )


def convert_isles22(root: str, output: str) -> None:
    """Convert the ISLES 2022 data set (BIDS: rawdata/ and derivatives/, MRI) into the nnU-Net v2 raw layout that
    --dataset nnunet and the bundles' --task nnunet read: DWI and ADC as channels 0 and 1, the lesion mask as label
    'lesion' (FLAIR is left out: it lies on another grid).

    Args:
        root: the ISLES 2022 folder (files are found at any depth, sub-strokecase<n>_ses-<k>_{dwi,adc,msk}.nii.gz).
        output: the new data set folder (must not exist).
    """
    from .isles22 import convert_isles22 as convert

    path = convert(str(root), str(output))
    meta = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
    print(
        f"wrote {path}: {meta['numTraining']} training cases, channels DWI, ADC, label 'lesion'; next: python -m "
        f"pam_monai check --dataset nnunet --root {quote(str(path))}, then train with --task nnunet "
        f"--dataset_dir {quote(str(path))}"
    )


def convert_dicom(input_dir: str, output: str, channel: int = 0) -> None:
    """Convert every 3-D DICOM series under INPUT_DIR (any depth) into OUTPUT/<case>_<XXXX>.nii.gz, the image files
    an own-data model segments (--input_dir OUTPUT) or a data set's imagesTs.

    Args:
        input_dir: a folder of DICOM files, e.g. a PACS export (several series and sub-folders are fine).
        output: the folder of the NIfTI images (created; dicom_series.json there says which series each case is).
        channel: the channel number XXXX of these series; convert a study's other series (e.g. ADC after T2) into the
            same OUTPUT with the next number, and each patient's series join one case.
    """
    from .dicom import convert_dicom as convert

    # str(): Fire turns an all-digit folder name (a study date, 20240101) into a number
    written = convert(str(input_dir), str(output), channel=channel)
    print(
        f"wrote {len(written)} image(s) into {output} (channel {int(channel):04d}); sources: {Path(output) / 'dicom_series.json'}"
    )


def _dataset_of(root: str) -> str:
    """``nnunet`` for a folder holding a dataset.json (own data); the data set ``synthetic.json``
    records for a set ``synth`` (or a stand-in) wrote, said in a NOTE line; the others need --dataset."""
    from .folders import folders_note

    if (Path(root) / "dataset.json").is_file():
        return "nnunet"
    marked = _marked_dataset(root)
    if marked:
        from .synthetic import MARKER

        print(
            f"NOTE {root}: no --dataset; its {MARKER} (a synthetic set) records {marked}: checked as {marked}"
        )
        return marked
    raise ValueError(
        f"{root}: which data set is it? Pass --dataset brats, isles, cityscapes or nnunet (own data in the "
        f"nnU-Net layout, a folder with dataset.json, and a set synth wrote, by its synthetic.json: found by "
        f"themselves){folders_note(root)}"
    )


def _check_default_split(report, root: str) -> None:
    """Add to ``report`` own data's problem for training with the bundles' default split (too few
    cases for fold 0), as ``bundle`` refuses it; a check of ``--datalist`` (one's own split) skips it."""
    from .datalist import OWN_SPLIT_FIX, default_split_problem
    from .layout import Problem

    problem = default_split_problem("nnunet", root)
    if problem:
        report.problems.append(
            Problem(
                Path(root).name,
                "split",
                f"{problem}: add cases to imagesTr/ and labelsTr/, or {OWN_SPLIT_FIX} (python -m pam_monai "
                "check --datalist FILE checks it)",
            )
        )


def _check_cityscapes_split(report, root: str) -> None:
    """Add to ``report`` a warning where the CityScapes split (``build_datalist``) stops training:
    too few 'train' cities to hold one out for validation. A warning, not a problem: the frames
    themselves are sound, the 'val' frames may still be evaluated, and every frame segmented."""
    from .datalist import build_datalist
    from .layout import Problem

    try:
        build_datalist("cityscapes", root)
        return
    except ValueError as e:
        training = str(e)
    try:
        build_datalist("cityscapes", root, training=False)
        runs = "training would refuse it; evaluation reads the 'val' frames alone (a model trained elsewhere)"
    except ValueError:
        runs = "training and evaluation would refuse it; inference segments every frame"
    report.warnings.append(Problem(Path(root).name, "split", f"{training}; {runs}"))


def _marked_dataset(root: str) -> str | None:
    """The data set that ROOT's ``synthetic.json`` (written by ``synth`` and by the stand-ins of
    ``ensure_dataset``) records, where it names one of the paper's; None without a readable one."""
    from .specs import DATASETS
    from .synthetic import MARKER

    try:
        recorded = json.loads((Path(root) / MARKER).read_text(encoding="utf-8")).get("dataset")
    except (OSError, ValueError, AttributeError):  # none, unreadable, or not a JSON object
        return None
    name = str(recorded).lower() if isinstance(recorded, str) else None
    return name if name in DATASETS else None


def _unlabelled_set(dataset: str, root: str, unlabelled: bool | None) -> tuple[bool, str | None]:
    """Whether ``check`` reads ROOT as an unlabelled set, and the reader's subset folder to check:
    ISLES 2018's TESTING/ (no OT masks) by default, own data's imagesTs with ``unlabelled``."""
    from ..engines.flags import as_bool

    name, root = dataset.lower(), Path(root)
    if name == "isles" and unlabelled is None:
        alone = (root / "TESTING").is_dir() and not (root / "TRAINING").is_dir()
        unlabelled = alone or root.name == "TESTING"
        return unlabelled, "TESTING" if alone else None
    unlabelled = bool(unlabelled is not None and as_bool(unlabelled))
    if unlabelled and name == "isles" and (root / "TESTING").is_dir():
        return True, "TESTING"
    if unlabelled and name == "nnunet" and (root / "dataset.json").is_file() and (root / "imagesTs").is_dir():
        return True, "imagesTs"
    return unlabelled, None


def check(
    dataset: str | None = None,
    root: str | None = None,
    foreground_label: str | None = None,
    grades: str = "HGG",
    quiet: bool = False,
    crop_size: list | None = None,
    datalist: str | None = None,
    unlabelled: bool | None = None,
) -> None:
    """Check every case under ROOT; print a per-case summary; exit 1 on any problem.

    Args:
        dataset: brats, isles, cityscapes or nnunet (own data: ROOT holds its dataset.json; the
            default when it does); by default too the one a synthetic set's synthetic.json records.
        root: the data root in the published layout.
        foreground_label: the BRATS enhancing tumour label, 4 (2018, default) or 3 (BraTS 2021+); for
            own data, label values or names of its dataset.json (default every non-zero label).
        grades: BRATS grades, "HGG" or "HGG,LGG".
        quiet: print only warnings, problems and the verdict.
        crop_size: the in-plane crop "[h, w]" to check against, or for own 2-D images the size they
            are resized to, e.g. "[128, 128]". Defaults are the largest in-plane size of the training
            volumes rounded up to 16 for own volumes, the median image size with the longer side at
            most 256 rounded up to 16 for own 2-D images, and the paper's data sets' own crops.
        datalist: a datalist (paths relative to ROOT) to check too, as training's --data_list_file_path:
            each entry's files exist, one per channel, in the channels' order.
        unlabelled: check a set without labels (images only, as inference reads them: files, channels,
            shapes, spacing, orientation), e.g. own data's imagesTs, CityScapes' frames of every split
            ('test' too); the default for ISLES' TESTING/ (a root holding it without TRAINING/, or the
            TESTING folder itself).
    """
    from .checker import check_dataset
    from .specs import get_spec

    if root is None:
        raise ValueError("give the data set's folder: --root DIR")
    root = str(root)  # an all-digit folder name arrives as a number from Fire
    dataset = _dataset_of(root) if dataset is None else str(dataset)
    options = {"grades": grades} if dataset.lower() == "brats" else {}
    unlabelled, subset = _unlabelled_set(dataset, root, unlabelled)
    if subset:
        options["subset"] = subset
    if crop_size is not None:
        dataset = get_spec(dataset, root=root, crop_size=crop_size)
    datalist = None if datalist is None else str(datalist)
    report = check_dataset(
        dataset,
        root,
        foreground_label=foreground_label,
        progress=not quiet,
        datalist=datalist,
        labels=not unlabelled,
        **options,
    )
    if report.ok and not unlabelled and datalist is None:  # the bundles' default split of these cases
        if report.dataset == "nnunet":
            _check_default_split(report, root)
        elif report.dataset == "cityscapes":
            _check_cityscapes_split(report, root)
    text = report.format()
    if quiet:
        text = "\n".join(
            line
            for line in text.splitlines()
            if line.startswith(("WARNING", "ERROR", "NOTE", "OK", "FAILED"))
        )
    print(text)
    if not report.ok:
        sys.exit(1)
