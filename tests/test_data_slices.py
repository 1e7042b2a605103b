"""Volume preprocessing, the slice cache and the 2-D slice dataset (pam_monai.data.{preprocess,slices})."""

import errno
import json
import pickle
import time

import numpy as np
import pytest
import torch

from pam_monai.data import (
    SliceDataset,
    build_datalist,
    discover_cases,
    get_preprocess_transforms,
    get_split,
    load_case,
    load_datalist,
    preprocess_case,
    restore_prediction,
    synth,
)
from pam_monai.data.files import load_nifti


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic")
    return {
        "brats": synth("brats", base / "brats", cases=2, slices=12),
        "isles": synth("isles", base / "isles", cases=2, max_slices=3),
        "cityscapes": synth("cityscapes", base / "city", cases=1, size=(128, 64)),
    }


@pytest.fixture(scope="module")
def items(roots):
    return {name: discover_cases(name, root) for name, root in roots.items()}


@pytest.mark.parametrize("name", ["brats", "isles", "cityscapes"])
def test_numpy_preprocessing_equals_the_monai_chain(items, name):
    for item in items[name]:
        ours = preprocess_case(name, item)
        ref = get_preprocess_transforms(name)(dict(item))
        np.testing.assert_allclose(ours["image"], np.asarray(ref["image"]), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(ours["label"], np.asarray(ref["label"]))
        assert ours["label"].sum() > 0 or name == "cityscapes"


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_cityscapes_monai_chain_reads_rgba_and_palette_frames_as_load_case(items, tmp_path, mode):
    """A frame saved as RGBA or as a palette image: the documented MONAI chain reads it as the
    training's loader does (RGB, 3 channels); it took the alpha channel along (4 channels)."""
    from PIL import Image

    item = dict(items["cityscapes"][0])
    rgb = Image.open(item["image"]).convert("RGB")
    frame = rgb.convert("RGBA") if mode == "RGBA" else rgb.quantize(colors=64)
    path = tmp_path / f"{mode}_leftImg8bit.png"
    frame.save(path)
    item["image"] = str(path)
    ours = preprocess_case("cityscapes", item)
    ref = get_preprocess_transforms("cityscapes")(dict(item))
    assert tuple(np.asarray(ref["image"]).shape) == tuple(ours["image"].shape) == (3, 128, 256)
    np.testing.assert_allclose(ours["image"], np.asarray(ref["image"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours["label"], np.asarray(ref["label"]))


@pytest.mark.parametrize(
    "name, shape", [("brats", (4, 160, 160)), ("isles", (4, 224, 224)), ("cityscapes", (3, 128, 256))]
)
def test_slice_dataset_gives_the_papers_shapes(items, name, shape):
    ds = SliceDataset(items[name], name, progress=False)
    assert len(ds) > 0
    for i in range(len(ds)):
        s = ds[i]
        assert tuple(s["image"].shape) == shape and s["image"].dtype == torch.float32
        assert tuple(s["label"].shape) == (1, *shape[1:]) and s["label"].dtype == torch.float32
        assert set(s["label"].unique().tolist()) <= {0.0, 1.0}


def test_slice_selection_keeps_foreground_and_a_fraction_of_the_rest(items):
    brats = items["brats"]
    full = SliceDataset(brats, "brats", keep_background_fraction=1.0, progress=False)
    assert len(full) == 2 * 12
    half = SliceDataset(brats, "brats", keep_background_fraction=0.5, seed=0, progress=False)
    expected = 0
    for item in brats:
        et = load_nifti(item["label"])[0] == 4
        per_slice = et.any(axis=(0, 1))
        expected += int(per_slice.sum()) + int(np.floor(0.5 * (~per_slice).sum() + 0.5))
    assert len(half) == expected < len(full)
    chosen = {half.slice_info(i) for i in range(len(half))}
    for v, item in enumerate(brats):
        fg_slices = np.flatnonzero((load_nifti(item["label"])[0] == 4).any(axis=(0, 1)))
        assert {(half.cases[v], int(z)) for z in fg_slices} <= chosen  # every foreground slice kept
    again = SliceDataset(brats, "brats", seed=0, progress=False)
    assert [again.slice_info(i) for i in range(len(again))] == [half.slice_info(i) for i in range(len(half))]
    other = [SliceDataset(brats, "brats", seed=s, progress=False) for s in (1, 2, 3)]
    assert any({o.slice_info(i) for i in range(len(o))} != chosen for o in other)
    half.resample(5)
    assert len(half) == expected
    for bad in (1.5, "half"):  # named without the flag, and a word failed on comparing a str with a float
        with pytest.raises(ValueError) as err:
            SliceDataset(brats, "brats", keep_background_fraction=bad, progress=False)
        assert str(err.value) == (
            f"--keep_background_fraction {bad!r}: not a share in [0, 1] (of the slices without foreground kept); "
            "pass e.g. --keep_background_fraction 0.5"
        )
    assert (
        SliceDataset(brats, "brats", keep_background_fraction="1", progress=False).keep_background_fraction
        == 1.0
    )


def test_a_slice_with_one_foreground_voxel_is_a_foreground_slice(items, tmp_path):
    """Every foreground slice is kept, however little foreground it holds: a lesion's first or
    last slice may have one voxel, and must not be drawn (or dropped) among the background ones."""
    import nibabel as nib

    item = dict(items["brats"][0])
    seg = nib.load(item["label"])
    data = np.asanyarray(seg.dataobj).copy()
    data[data == 4] = 0
    data[120, 120, 3] = 4  # one enhancing voxel, inside the 40:200 crop, on slice 3 alone
    item["label"] = str(tmp_path / "one_voxel_seg.nii.gz")
    nib.save(nib.Nifti1Image(data, seg.affine), item["label"])
    only = SliceDataset([item], "brats", keep_background_fraction=0.0, progress=False)
    assert [only.slice_info(i) for i in range(len(only))] == [(item["case"], 3)]


def test_slices_equal_the_preprocessed_volume(items, tmp_path):
    item = items["brats"][0]
    vol = preprocess_case("brats", item)
    exact = SliceDataset([item], "brats", cache_dtype="float32", keep_background_fraction=1.0, progress=False)
    half = SliceDataset([item], "brats", cache_dir=tmp_path, keep_background_fraction=1.0, progress=False)
    assert half.cache_dtype == np.float16  # the default for z-scored channels
    for z in range(vol["image"].shape[-1]):
        assert exact.slice_info(z) == (item["case"], z)
        np.testing.assert_array_equal(exact[z]["image"].numpy(), vol["image"][..., z])
        np.testing.assert_array_equal(exact[z]["label"].numpy(), vol["label"][..., z])
        # float16 cache: z-scores of a few units keep ~3 significant digits
        np.testing.assert_allclose(half[z]["image"].numpy(), vol["image"][..., z], atol=1e-2, rtol=1e-3)


def test_disk_cache_is_written_once_and_memory_mapped(items, tmp_path, monkeypatch):
    brats = items["brats"]
    first = SliceDataset(brats, "brats", cache_dir=tmp_path, progress=False)
    files = sorted(p.name for p in (tmp_path / "brats").iterdir())
    assert len(files) == 3 * len(brats) and not [f for f in files if f.endswith(".tmp")]
    assert first.cache_bytes == 2 * 12 * (4 * 160 * 160 * 2 + 160 * 160)

    def fail(*args, **kwargs):
        raise AssertionError("preprocessed again despite the cache")

    monkeypatch.setattr("pam_monai.data.slices.preprocess_case", fail)
    second = SliceDataset(brats, "brats", cache_dir=tmp_path, progress=False)
    assert all(isinstance(a, np.memmap) for a in second._images)
    torch.testing.assert_close(second[3]["image"], first[3]["image"])
    # workers get file names, not copies of the volumes
    assert len(pickle.dumps(second)) < 20_000
    clone = pickle.loads(pickle.dumps(second))
    torch.testing.assert_close(clone[5]["label"], second[5]["label"])
    with pytest.raises(AssertionError, match="preprocessed again"):  # other settings, other files
        SliceDataset(brats, "brats", cache_dir=tmp_path, cache_dtype="float32", progress=False)


def test_a_truncated_cache_file_is_prepared_again(items, tmp_path, caplog):
    """A cache file cut short (a node that crashed or lost power after the file's rename, before
    its data reached the disk: the writes are atomic for a killed process, not for a lost page
    cache) stopped every later training there with numpy's "mmap length is greater than file size"
    or "No data left in file", naming no file. Such a volume is now prepared again, with a
    warning naming the file."""
    import logging

    brats = items["brats"][:2]
    first = SliceDataset(brats, "brats", cache_dir=tmp_path, progress=False)
    image = sorted((tmp_path / "brats").glob("*.image.npy"))[0]
    label = sorted((tmp_path / "brats").glob("*.label.npy"))[1]
    for path, kept in ((image, image.stat().st_size // 2), (label, 0)):  # new files: first maps the old
        cut = path.with_name("cut")
        cut.write_bytes(path.read_bytes()[:kept])
        cut.replace(path)
    with caplog.at_level(logging.WARNING, logger="pam_monai"):
        again = SliceDataset(brats, "brats", cache_dir=tmp_path, progress=False)
    assert str(image) in caplog.text and str(label) in caplog.text, caplog.text
    assert len(again) == len(first)
    for i in range(len(again)):
        torch.testing.assert_close(again[i]["image"], first[i]["image"])
        torch.testing.assert_close(again[i]["label"], first[i]["label"])


def test_dataloader_workers_read_the_cache(items, tmp_path):
    ds = SliceDataset(items["brats"], "brats", cache_dir=tmp_path, progress=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    n = sum(batch["image"].shape[0] for batch in loader)
    assert n == len(ds)


def test_getitem_is_a_cheap_slice(items):
    """__getitem__ is an array slice: far cheaper than a per-slice MONAI chain (timed side by side,
    best of three, so that a busy machine slows both alike)."""
    from monai.transforms import Compose, NormalizeIntensity, ResizeWithPadOrCrop

    ds = SliceDataset(items["brats"], "brats", keep_background_fraction=1.0, progress=False)
    chain = Compose([NormalizeIntensity(nonzero=True, channel_wise=True), ResizeWithPadOrCrop((160, 160))])
    raw = torch.from_numpy(np.random.default_rng(0).integers(0, 500, size=(4, 240, 240)).astype(np.float32))

    def best(fn, n):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for i in range(n):
                fn(i)
            times.append((time.perf_counter() - start) / n)
        return min(times)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # intra-op threads on a busy 2-core machine slow MONAI down erratically
    try:
        ours = best(lambda i: ds[i], len(ds))
        theirs = best(lambda i: chain(raw), 5)
    finally:
        torch.set_num_threads(threads)
    assert 5 * ours < theirs, f"{ours * 1e3:.2f} ms per slice vs {theirs * 1e3:.2f} ms for a MONAI chain"


def test_restore_prediction_undoes_the_crop(items):
    item = items["brats"][1]
    case = load_case("brats", item)
    pre = preprocess_case("brats", case)
    back = restore_prediction("brats", pre["label"][0], case["original_shape"])
    assert back.shape == case["original_shape"] == (240, 240, 12)
    np.testing.assert_array_equal(back, (case["label"] == 4).astype(np.float32))
    np.testing.assert_array_equal(pre["affine"], load_nifti(item["image"][0])[1])
    city = load_case("cityscapes", items["cityscapes"][0])
    small = preprocess_case("cityscapes", city)["label"]
    assert restore_prediction("cityscapes", small, city["original_shape"]).shape == (1, 64, 128)


def test_foreground_label_3_for_brats_2021(items, tmp_path):
    import nibabel as nib

    item = dict(items["brats"][0])
    seg = nib.load(item["label"])
    data = np.asanyarray(seg.dataobj).copy()
    data[data == 4] = 3
    item["label"] = str(tmp_path / "seg2021.nii.gz")
    nib.save(nib.Nifti1Image(data, seg.affine), item["label"])
    new = preprocess_case("brats", item, foreground_label=3)["label"]
    old = preprocess_case("brats", items["brats"][0])["label"]
    np.testing.assert_array_equal(new, old)
    assert new.sum() > 0
    with pytest.raises(ValueError, match="label 4 .* or 3"):
        preprocess_case("brats", item, foreground_label=2)


def test_a_training_set_without_foreground_is_refused(items, caplog):
    """A label convention that does not match (BraTS 2018 labels with BraTS 2021's foreground
    label 3 here: the synthetic cases have no label 3) must not train on empty targets."""
    with pytest.raises(
        ValueError, match=r"none of the 2 training cases has a voxel of foreground label\(s\) \[3\]"
    ):
        SliceDataset(items["brats"][:2], "brats", foreground_label=3, progress=False)


def test_float16_cache_refuses_intensities_beyond_its_range(tmp_path):
    """A 'noNorm' channel of raw values above 65504: float16 would cache inf, so it is refused
    (naming the file), and the default cache of such a channel is float32."""
    import json

    import nibabel as nib

    from pam_monai.data.specs import get_spec

    root = tmp_path / "Dataset905_Raw"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        image = rng.integers(60000, 120000, (32, 32, 4)).astype(np.int32)
        label = np.zeros((32, 32, 4), np.uint8)
        label[10:20, 10:20] = 1
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / f"C{i}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"C{i}.nii.gz"))
    meta = {
        "channel_names": {"0": "noNorm"},
        "labels": {"background": 0, "lesion": 1},
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 3}))
    spec = get_spec("nnunet", root=root)
    train = get_split(spec, load_datalist(build_datalist(spec, root), root), "train")
    with pytest.raises(ValueError, match=r"C\d_0000.nii.gz: .*float16"):
        SliceDataset(train, spec, progress=False, cache_dtype="float16")
    # the default keeps stored values in float32 (what the bundles use)
    default = SliceDataset(train, spec, progress=False)
    assert default.cache_dtype == np.float32
    assert float(default[0]["image"].max()) > 65504 and bool(torch.isfinite(default[0]["image"]).all())


def test_a_cityscapes_entry_may_list_its_one_image_file(roots, items, tmp_path):
    """MONAI's decathlon datalists list images; ``check --datalist`` accepts a CityScapes entry
    whose ``image`` is a list of its one file, but training then failed with 'TypeError: expected
    str, bytes or os.PathLike object, not list', naming neither case nor file."""
    from pam_monai.data import check_dataset

    item = items["cityscapes"][0]
    listed = {**item, "image": [item["image"]]}
    np.testing.assert_array_equal(
        load_case("cityscapes", listed)["image"], load_case("cityscapes", item)["image"]
    )
    a, b = (
        SliceDataset([item], "cityscapes", progress=False),
        SliceDataset([listed], "cityscapes", progress=False),
    )
    assert torch.equal(a[0]["image"], b[0]["image"]) and torch.equal(a[0]["label"], b[0]["label"])
    datalist = build_datalist("cityscapes", roots["cityscapes"])
    for entry in datalist["training"]:
        entry["image"] = [entry["image"]]
    path = tmp_path / "city.json"
    path.write_text(json.dumps(datalist))
    assert check_dataset("cityscapes", roots["cityscapes"], datalist=path).ok
    with pytest.raises(ValueError, match="expected one RGB image file, got 2"):
        load_case("cityscapes", {**item, "image": [item["image"]] * 2})


def test_datasets_still_take_their_entries_as_items(items):
    """Bundles written before the argument was renamed data (configs/train.json's
    train#dataset#items, validate#dataset#items) still build their datasets, with a FutureWarning."""
    from pam_monai.engines.data import CaseDataset

    with pytest.warns(FutureWarning, match="items= is now data="):
        old = SliceDataset(items=items["isles"], dataset="isles", progress=False)
    assert len(old) == len(SliceDataset(data=items["isles"], dataset="isles", progress=False)) > 0
    with pytest.warns(FutureWarning, match="#dataset#items"):
        assert len(CaseDataset(items=items["isles"], dataset="isles")) == len(items["isles"])
    with pytest.raises(TypeError, match="not also as items"):
        CaseDataset(items["isles"], "isles", items=items["isles"])


@pytest.mark.parametrize("given, kept", [("false", False), ("true", True), (False, False)])
def test_case_dataset_cache_takes_a_command_line_flag(items, given, kept):
    """``--validate#dataset#cache false`` arrives as the string "false" (the override check takes it
    for a true/false flag): CaseDataset took it for true and kept every case in memory."""
    from pam_monai.engines.data import CaseDataset

    ds = CaseDataset(items["isles"], "isles", cache=given)
    ds[0]
    assert (ds._cache is not None and len(ds._cache) == 1) is kept


def test_cache_headers_are_parsed_one_thread_at_a_time(items, tmp_path, monkeypatch):
    """numpy parses a .npy header with ast.literal_eval; CPython 3.11's AST builder shares its
    recursion depth between threads, so the preparing threads parsing headers at once raised a rare
    'SystemError: AST constructor recursion depth mismatch' (seen in CI): every cache file is opened
    holding the slice cache's lock, when written and when read back."""
    from pam_monai.data import slices as slices_module

    real_load, held = np.load, []

    def load(*args, **kwargs):
        held.append(slices_module._NPY_HEADER_LOCK.locked())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", load)
    SliceDataset(items["brats"], "brats", cache_dir=tmp_path, num_workers=2, progress=False)  # written
    SliceDataset(items["brats"], "brats", cache_dir=tmp_path, num_workers=2, progress=False)  # read back
    assert held and all(held), held


def test_case_dataset_carries_the_voxel_size_of_its_files(items):
    """REFERENCE.md section 7: HD95 in the image's physical units, not pixels. The bundles' metrics
    take ``spacing`` from the case (test_metrics.py); it must be the files' voxel size (ISLES
    stand-ins: 0.9 x 0.9 x 5 mm), also for an oblique affine (the norms of its columns)."""
    from pam_monai.engines.data import CaseDataset, voxel_spacing

    item = items["isles"][0]
    import nibabel as nib

    zooms = nib.load(item["label"]).header.get_zooms()[:3]
    assert min(zooms) != max(zooms)  # anisotropic, so a fallback to 1.0 or a swapped axis shows
    spacing = CaseDataset([item], "isles")[0]["spacing"]
    np.testing.assert_allclose(spacing.numpy(), zooms, rtol=1e-6)
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = np.array([[c * 0.8, -s * 1.2, 0, 5], [s * 0.8, c * 1.2, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(voxel_spacing(oblique, 3), (0.8, 1.2, 3.0))


def test_the_checker_and_the_engines_take_one_voxel_spacing():
    """The checker (summary, slice axis, in-plane size) and the engines (a case's spacing, HD95 in
    mm; inference's spacing warning; scoring) read voxel sizes with one function: an oblique affine
    with flipped axes gives every one the same positive sizes, in float64 whatever the affine's type."""
    from pam_monai.data import checker, files
    from pam_monai.engines import data, infer, score

    spacing = files.voxel_spacing
    assert (
        checker.voxel_spacing is data.voxel_spacing is infer.voxel_spacing is score.voxel_spacing is spacing
    )
    c, s = np.cos(0.3), np.sin(0.3)
    # rotated in-plane, the first and the slice axis flipped: sizes 0.8, 1.2 and 3 mm
    oblique = np.array([[-c * 0.8, -s * 1.2, 0, 5], [-s * 0.8, c * 1.2, 0, 0], [0, 0, -3.0, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(spacing(oblique), (0.8, 1.2, 3.0))
    np.testing.assert_allclose(spacing(oblique, 2), (0.8, 1.2))
    assert spacing(None, 2) == (1.0, 1.0)
    single = oblique.astype(np.float32)  # a header's float32 affine: sized as its float64 copy
    assert spacing(single) == spacing(single.astype(np.float64))
    thick_first = oblique[:, [2, 0, 1, 3]]  # the flipped 3 mm axis stored first
    assert "voxel spacing 3 x 0.8 x 1.2 mm: its thickest axis is array axis 0" in checker.slice_axis_problem(
        thick_first
    )


@pytest.mark.parametrize("name,crop", [("brats", 160), ("isles", 224)])
def test_preprocessing_is_reference_md_s(items, name, crop):
    """REFERENCE.md section 6, re-stated from the files alone: per case and per modality, in the
    reader's channel order, z-score by the mean and std of the volume's non-zero voxels (the
    whole volume's, before the crop), then the in-plane centre crop (BRATS rows and columns
    40:200 of 240). Compared on the non-zero voxels, the ones the statistics describe."""
    import nibabel as nib

    for item in items[name]:
        image = preprocess_case(name, item)["image"]
        assert image.shape[:3] == (len(item["image"]), crop, crop)
        for c, path in enumerate(item["image"]):
            volume = np.asarray(nib.load(path).dataobj, dtype=np.float64)
            r0, c0 = (volume.shape[0] - crop) // 2, (volume.shape[1] - crop) // 2
            if name == "brats":
                assert volume.shape[:2] == (240, 240) and r0 == c0 == 40
            values = volume[volume != 0]
            inside = volume[r0 : r0 + crop, c0 : c0 + crop]
            expected = (inside - values.mean()) / values.std()
            nonzero = inside != 0
            np.testing.assert_allclose(image[c][nonzero], expected[nonzero], rtol=1e-4, atol=1e-4)


@pytest.fixture
def low_open_file_limit():
    """The soft open-file limit lowered to what is open now plus 10 (restored after the test)."""
    resource = pytest.importorskip("resource")
    from pathlib import Path

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("counts open files in /proc/self/fd")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = len(list(Path("/proc/self/fd").iterdir())) + 10
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        yield low
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_slice_cache_of_more_cases_than_open_files(tmp_path, low_open_file_limit):
    """Every memory-mapped cache file holds an open descriptor (3 per case): a data set of more
    than a third of ``ulimit -n`` cases (1024: BraTS 2019+; macOS' 256: 86 cases) failed with
    'Too many open files'. The soft limit is now raised as far as the cache needs."""
    items = discover_cases("isles", synth("isles", tmp_path / "d", cases=2, max_slices=2))
    items = [dict(items[i % 2], case=f"case{i}") for i in range(6)]  # 18 mapped files
    ds = SliceDataset(items, "isles", cache_dir=tmp_path / "cache", progress=False)
    assert ds.summary()["cases"] == 6 and len(ds) > 0


def test_slice_cache_refuses_a_hard_open_file_limit_too_low(tmp_path, monkeypatch):
    """A hard limit below what the cache needs is named before any case is prepared."""
    resource = pytest.importorskip("resource")
    monkeypatch.setattr(resource, "getrlimit", lambda which: (64, 64))
    items = discover_cases("isles", synth("isles", tmp_path / "d", cases=2, max_slices=2))
    items = [dict(items[i % 2], case=f"case{i}") for i in range(30)]  # 90 mapped files
    with pytest.raises(OSError, match=r"memory-maps 90 files.*only 64 files.*ulimit -Hn 346"):
        SliceDataset(items, "isles", cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))


class _SpawningPopen:
    """What a spawning ``Popen`` offers the reductions while it pickles a worker's arguments
    (``multiprocessing.popen_spawn_posix``): file descriptors to pass to the child."""

    def __init__(self):
        self.fds = []

    def duplicate_for_child(self, fd):
        self.fds.append(fd)
        return fd

    def DupFd(self, fd):  # noqa: N802  (multiprocessing's name)
        return fd


def test_spawned_workers_share_the_in_memory_volumes(items):
    from multiprocessing import context, reduction

    ds = SliceDataset(items["brats"], "brats", progress=False)
    expected = [ds[i] for i in (0, len(ds) - 1)]
    context.set_spawning_popen(_SpawningPopen())  # as Process.start() does while it pickles
    try:
        sent = bytes(reduction.ForkingPickler.dumps(ds))
    finally:
        context.set_spawning_popen(None)
    # a spawned worker gets handles of the volumes, not a copy of them (~1 MB here, GBs for BraTS)
    assert len(sent) < 20_000 < ds.cache_bytes
    copy = pickle.loads(pickle.dumps(ds))  # plain pickling still copies them
    for i, sample in zip((0, len(ds) - 1), expected):
        torch.testing.assert_close(ds[i], sample)
        torch.testing.assert_close(copy[i], sample)


def test_spawned_dataloader_workers_read_the_in_memory_volumes(items):
    ds = SliceDataset(items["brats"], "brats", progress=False)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=len(ds), num_workers=1, multiprocessing_context="spawn"
    )
    batch = next(iter(loader))
    torch.testing.assert_close(batch["image"], torch.stack([ds[i]["image"] for i in range(len(ds))]))
    torch.testing.assert_close(batch["label"], torch.stack([ds[i]["label"] for i in range(len(ds))]))


def test_shared_memory_too_small_for_spawned_workers_names_the_way_out(items, monkeypatch):
    """Docker's 64 MB /dev/shm cannot hold a training set: torch's own error names its shm file
    only; ours says to pass cache_dir or give /dev/shm more room."""
    from multiprocessing import context, reduction

    def full(self):
        raise RuntimeError(
            "unable to allocate shared memory(shm) for file </torch_1_2_0>: No space left on device (28)"
        )

    ds = SliceDataset(items["brats"], "brats", progress=False)
    monkeypatch.setattr(torch.Tensor, "share_memory_", full)
    context.set_spawning_popen(_SpawningPopen())
    try:
        with pytest.raises(
            OSError, match=r"cannot hold \d+ MiB.*No space left.*cache_dir.*--shm-size"
        ) as raised:
            reduction.ForkingPickler.dumps(ds)
    finally:
        context.set_spawning_popen(None)
    assert raised.value.errno == errno.ENOSPC


@pytest.mark.parametrize("name", ["brats", "isles", "cityscapes"])
def test_train_transforms_flip_left_right_as_the_batched_pipeline(items, name):
    """get_train_transforms (the documented MONAI chain) flips the axis the training's batched flip
    (random_flip_batch on the spec's flip_axis) flips: the patient's left-right, or the image width."""
    from pam_monai.data import DATASETS, get_train_transforms, random_flip_batch

    item = items[name][0]
    ref = get_preprocess_transforms(name)(dict(item))
    flipped = get_train_transforms(name, flip_prob=1.0)(dict(item))
    unflipped = get_train_transforms(name, flip_prob=0.0)(dict(item))
    torch.testing.assert_close(torch.as_tensor(unflipped["image"]), torch.as_tensor(ref["image"]))
    for key in ("image", "label"):
        whole = torch.as_tensor(ref[key])
        # the batched pipeline's samples: one slice of the volume (the last axis), C x H x W
        samples = whole.movedim(-1, 0) if DATASETS[name].volumetric else whole[None]
        batch = random_flip_batch({key: samples}, prob=1.0, spatial_axis=DATASETS[name].flip_axis)
        expected = batch[key].movedim(0, -1) if DATASETS[name].volumetric else batch[key][0]
        torch.testing.assert_close(torch.as_tensor(flipped[key]), expected)
        assert not torch.equal(expected, whole)  # the flip is visible on these cases


# --------------------------------------------------------------- per-sample transforms (train_transforms)
class _Draw:
    """A MONAI-style random transform: the image becomes one value drawn from its random state
    (what a worker's random state gives shows in the batch)."""

    def __init__(self):
        self.R = np.random.RandomState()

    def set_random_state(self, seed=None, state=None):
        self.R = np.random.RandomState(seed)
        return self

    def __call__(self, sample):
        return {**sample, "image": torch.full_like(sample["image"], float(self.R.rand()))}


def test_slice_dataset_transform_serves_plain_float32_tensors_of_the_sample(items):
    """A MONAI dictionary transform runs on each served sample (MetaTensors come back plain: they
    would carry metadata into the trainer and the compiled network), and the same seed gives the
    same draws run after run."""
    from monai.transforms import Compose, RandFlipd, RandGaussianNoised

    plain = SliceDataset(items["brats"], "brats", progress=False, seed=3)  # the same slices

    def chain():
        return Compose(
            [
                RandGaussianNoised("image", prob=1.0, std=0.5, sample_std=False),
                RandFlipd(["image", "label"], prob=1.0, spatial_axis=0),
            ]
        )

    a = SliceDataset(items["brats"], "brats", progress=False, transform=chain(), seed=3)
    b = SliceDataset(items["brats"], "brats", progress=False, transform=chain(), seed=3)
    for i in (0, len(a) - 1):
        x, y = a[i], b[i]
        for key in ("image", "label"):
            assert type(x[key]) is torch.Tensor and x[key].dtype == torch.float32, type(x[key])
            torch.testing.assert_close(x[key], y[key])  # seeded by the dataset's seed
        base = plain[i]
        torch.testing.assert_close(x["label"], base["label"].flip(1))  # labels: flipped only
        noise = x["image"].flip(1) - base["image"]
        assert 0.4 < float(noise.std()) < 0.6  # the noise drawn
    with pytest.raises(TypeError, match="transform must be callable"):
        SliceDataset(items["brats"], "brats", progress=False, transform=[RandGaussianNoised("image")])


def test_dataloader_workers_draw_their_own_transform_values(items):
    """Each DataLoader worker starts from a copy of the main process's transform: without its own
    seed every worker draws the same values (worker 0's first sample equals worker 1's). The
    loader seeds each worker's copy (seed_worker_transform); the same seed gives the same batches."""
    from torch.utils.data import DataLoader

    from pam_monai.engines.loaders import slice_loader

    ds = SliceDataset(items["brats"], "brats", progress=False, transform=_Draw(), seed=0)

    def draws():
        loader = slice_loader(ds, batch_size=1, device="cpu", num_workers=2, seed=5)
        assert isinstance(loader, DataLoader)
        return [float(batch["image"].flatten()[0]) for _, batch in zip(range(4), loader)]

    first, again = draws(), draws()
    assert first == again
    assert first[0] != first[1] and first[2] != first[3], first  # batches 0, 2 from worker 0; 1, 3 from 1


def test_a_transformed_dataset_is_refused_by_the_device_loader(items):
    """The device loader copies each sample once: a per-sample random transform would be frozen."""
    from torch.utils.data import DataLoader

    from pam_monai.engines.loaders import DeviceSliceLoader, slice_loader

    ds = SliceDataset(items["brats"], "brats", progress=False, transform=_Draw())
    with pytest.raises(
        ValueError, match="device_data true: the training samples have a per-sample transform"
    ):
        slice_loader(ds, 2, "cpu", device_data="true")
    with pytest.raises(ValueError, match="DeviceSliceLoader: the dataset has a per-sample transform"):
        DeviceSliceLoader(ds, 2)
    assert isinstance(slice_loader(ds, 2, "cpu", device_data="auto"), DataLoader)
    assert isinstance(slice_loader(ds, 2, "cpu", device_data="false"), DataLoader)


def test_slice_dataset_docstring_example_runs():
    import doctest

    import pam_monai.data.slices as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_torchrun_ranks_draw_their_own_transform_values(items, workers):
    """Under torchrun every rank builds the dataset with the same seed: without a rank's own seed
    each rank drew the same augmentation values, in the main process and in its workers."""
    from torch.utils.data import DistributedSampler

    from pam_monai.engines.loaders import slice_loader

    def draws(rank):
        ds = SliceDataset(items["brats"], "brats", progress=False, transform=_Draw(), seed=0)
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = slice_loader(ds, batch_size=1, device="cpu", num_workers=workers, sampler=sampler, seed=0)
        return [float(batch["image"].flatten()[0]) for _, batch in zip(range(2), loader)]

    rank0, rank1 = draws(0), draws(1)
    assert rank0 == draws(0)  # reproducible
    assert rank0[0] != rank1[0] and rank0[1] != rank1[1], (rank0, rank1)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        (
            "RandCropByPosNegLabeld",
            {"label_key": "label", "spatial_size": (96, 96), "num_samples": 1},
            r"returned a list of 1 samples, not one sample dict.*num_samples",
        ),
        (
            "RandSpatialCropd",
            {"roi_size": (96, 96)},
            r"changed the image's shape from \(4, 160, 160\) to \(4, 96, 96\)",
        ),
        (
            "RandAffined",
            {"prob": 1.0, "rotate_range": 0.5, "padding_mode": "zeros"},
            r"made label values other than 0 / 1 \(.*\): interpolate labels with mode 'nearest'",
        ),
    ],
)
def test_a_transform_that_breaks_the_sample_is_refused_naming_the_slice(items, name, kwargs, match):
    """train_transforms' contract (one sample of the slice's shapes, a 0/1 label) is checked per
    sample: a MONAI crop's list failed with "'list' object is not a mapping", a crop at the batch's
    stacking or in the network, and a label rotated with MONAI's default bilinear mode trained on
    fractions without a word."""
    import monai.transforms

    transform = getattr(monai.transforms, name)(["image", "label"], **kwargs)
    ds = SliceDataset(items["brats"], "brats", progress=False, transform=transform, seed=0)
    i = int(np.argmax([float(ds._labels[v][z].sum()) for v, z in ds._index]))  # a slice with foreground
    case, z = ds.slice_info(i)
    with pytest.raises(ValueError, match=rf"train_transforms\) on slice {z} of {case} {match}"):
        ds[i]


def test_a_transform_may_keep_unannotated_voxels_of_a_sparse_data_set(items):
    """The label check lets the ignore value through where the data set marks unannotated voxels,
    and refuses it where it does not."""
    import dataclasses

    from pam_monai.data.ops import IGNORE

    def mark(sample):
        label = sample["label"].clone()
        label[0, :2] = IGNORE
        return {**sample, "label": label}

    ds = SliceDataset(items["brats"], "brats", progress=False, transform=mark)
    with pytest.raises(ValueError, match=r"label values other than 0 / 1 \(2, 2, 2, \.\.\.\)"):
        ds[0]
    ds.spec = dataclasses.replace(ds.spec, ignore_label=IGNORE)
    assert float(ds[0]["label"].max()) == IGNORE


@pytest.mark.parametrize("workers", [0, 2])
def test_transform_draws_follow_the_epoch_not_the_history(items, workers):
    """With the epoch set (the bundles' LoaderEpoch), an epoch's augmentation draws depend on the
    seed, the epoch and the worker alone, not on what earlier epochs drew: a run resumed at epoch 2
    draws what the uninterrupted run drew there. Without the epoch set, each epoch still draws anew
    (workers made each epoch, seeded by the loader's generator), never epoch 1's values again."""
    from pam_monai.engines.loaders import LoaderEpoch, slice_loader

    def loader_of(ds):
        return slice_loader(ds, batch_size=1, device="cpu", num_workers=workers, seed=0)

    def draws(loader):
        return [float(batch["image"].flatten()[0]) for _, batch in zip(range(4), loader)]

    def dataset():
        return SliceDataset(items["brats"], "brats", progress=False, transform=_Draw(), seed=0)

    whole = dataset()
    loader = loader_of(whole)
    epoch = LoaderEpoch(loader)
    assert epoch._target() is whole  # LoaderEpoch attaches for a transformed DataLoader
    from types import SimpleNamespace

    epoch(SimpleNamespace(state=SimpleNamespace(epoch=1)))
    first = draws(loader)
    epoch(SimpleNamespace(state=SimpleNamespace(epoch=2)))
    second = draws(loader)
    resumed = dataset()
    resumed.set_epoch(2)  # a resumed run: epoch 1 never drawn in this process
    assert draws(loader_of(resumed)) == second != first
    unset = loader_of(dataset())
    assert draws(unset) != draws(unset)  # no epoch set: still new draws each epoch
