"""The way back of 2-D predictions: the network's probabilities, on its downsized grid (CityScapes
128 x 256, own 2-D images), are resized bilinearly to the image's pixels and cut at the threshold
there, in inference (masks and probability maps) and in evaluation alike; no nearest-neighbour
staircase of the resize factor along the outlines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pam_monai.data import get_spec, restore_mask, restore_prediction
from pam_monai.data.ops import resize_2d
from pam_monai.engines import CaseDataset, CaseMetrics, CasePredictor, ForegroundMaskd, SliceWiseInferer
from pam_monai.engines.score import score_predictions
from pam_monai.metrics import case_metrics

CY, CX, R = 0.47, 0.53, 0.31  # the disc: centre (fractions of height, width), radius (of the height)


def true_disc(height: int, width: int) -> np.ndarray:
    """The disc on a full-resolution grid (pixel centres inside the circle)."""
    y, x = np.mgrid[:height, :width].astype(np.float64) + 0.5
    return np.hypot(y - CY * height, x - CX * width) <= R * height


def disc_error(mask: np.ndarray) -> tuple[float, float]:
    """``(IoU, max boundary deviation in pixels)`` of a mask against :func:`true_disc`: the
    deviation is the farthest any wrongly labelled pixel lies from the true circle."""
    height, width = mask.shape
    truth = true_disc(height, width)
    y, x = np.mgrid[:height, :width].astype(np.float64) + 0.5
    wrong = (mask > 0) != truth
    off = np.abs(np.hypot(y - CY * height, x - CX * width) - R * height)[wrong]
    iou = float(np.logical_and(mask > 0, truth).sum() / np.logical_or(mask > 0, truth).sum())
    return iou, float(off.max()) if off.size else 0.0


class SmoothDisc(torch.nn.Module):
    """A stand-in network: foreground logits of a smooth disc on whatever grid it is given,
    ``2 x`` the signed distance to the circle in the input's pixels (a trained network's
    probabilities rise over a pixel or two of its own grid)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))  # a parameter, so .to(device) has one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = (torch.arange(h, dtype=torch.float32) + 0.5)[:, None]
        xx = (torch.arange(w, dtype=torch.float32) + 0.5)[None, :]
        # distance in the input's pixels, of a circle of R * height (the same disc at any size)
        dist = torch.hypot(y - CY * h, xx - CX * w)
        logits = self.scale * (R * h - dist)
        return logits.expand(b, 1, h, w).to(x.dtype)


def nearest_way_back(prob: np.ndarray, shape: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """The old way back: cut on the small grid, then a nearest-neighbour resize of the mask."""
    return resize_2d((prob > threshold).astype(np.float32)[None], shape, "nearest-exact")[0] > 0.5


def small_probabilities(h: int, w: int) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(SmoothDisc()(torch.zeros(1, 3, h, w)))[0, 0].numpy()


def test_restore_mask_follows_the_outline_not_the_resize_steps():
    """A CityScapes frame (1024 x 2048) from the 128 x 256 grid: bilinear probabilities cut on the
    frame's pixels lie within about a pixel of the true circle; the nearest-neighbour way back is
    8 x 8 pixel steps, several pixels off."""
    shape = (1024, 2048)
    prob = small_probabilities(128, 256)
    mask = restore_mask("cityscapes", prob, shape, 0.5)
    assert mask.dtype == np.uint8 and mask.shape == shape and set(np.unique(mask)) == {0, 1}
    iou, deviation = disc_error(mask)
    old_iou, old_deviation = disc_error(nearest_way_back(prob, shape))
    print(
        f"restored disc: IoU {old_iou:.4f} -> {iou:.4f}, max deviation {old_deviation:.2f} -> {deviation:.2f} px"
    )
    assert deviation < 1.0 < 3.0 < old_deviation
    assert iou > 0.998 and 1 - iou < (1 - old_iou) / 4
    # the probability map the mask is cut from: float32 in [0, 1], and its cut is the mask at any threshold
    back = restore_prediction("cityscapes", prob, shape)
    assert back.dtype == np.float32 and back.shape == shape and 0 <= back.min() and back.max() <= 1
    for threshold in (0.5, 0.3, 0.9):
        np.testing.assert_array_equal(
            back > threshold, restore_mask("cityscapes", prob, shape, threshold) > 0
        )
    # volumes are uncropped, not resized: zeros outside the crop, the mask cut inside
    vol = np.full((1, 4, 4, 2), 0.7, np.float32)
    full = restore_mask("brats", vol[0], (8, 8, 2), 0.5)
    assert full.dtype == np.uint8 and full.sum() == 32 and full[2:6, 2:6].all()


def _one_frame(tmp_path, height: int, width: int) -> list[dict]:
    """Inference's items for one grey CityScapes frame of ``height x width`` pixels."""
    frame = tmp_path / "in" / "aachen_000000_000019_leftImg8bit.png"
    frame.parent.mkdir()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(frame)
    return [{"case": "aachen_000000_000019", "image": str(frame)}]


def test_cityscapes_inference_writes_smooth_masks_and_their_probabilities(tmp_path):
    """CasePredictor on a 1024 x 2048 frame: the vehicle mask (0 / 255) follows the disc within a
    pixel or so, and ``prob > threshold`` is exactly the mask, at 0.5 and at another threshold."""
    items = _one_frame(tmp_path, 1024, 2048)
    CasePredictor(SmoothDisc(), items, "cityscapes", str(tmp_path / "a"), save_probabilities=True).run()
    mask = np.asarray(Image.open(tmp_path / "a" / "aachen_000000_000019_vehicles.png"))
    prob = np.load(tmp_path / "a" / "aachen_000000_000019_prob.npy")
    assert mask.shape == prob.shape == (1024, 2048) and set(np.unique(mask)) == {0, 255}
    iou, deviation = disc_error(mask)
    old_iou, old_deviation = disc_error(nearest_way_back(small_probabilities(128, 256), (1024, 2048)))
    print(
        f"inference mask: IoU {old_iou:.4f} -> {iou:.4f}, max deviation {old_deviation:.2f} -> {deviation:.2f} px"
    )
    assert deviation < 1.0 and iou > 0.998
    np.testing.assert_array_equal(prob > 0.5, mask > 0)
    CasePredictor(SmoothDisc(), items, "cityscapes", str(tmp_path / "b"), threshold=0.8).run()
    mask = np.asarray(Image.open(tmp_path / "b" / "aachen_000000_000019_vehicles.png"))
    assert 0 < (mask > 0).sum() < ((prob > 0.5).sum())
    np.testing.assert_array_equal(prob > 0.8, mask > 0)


class ZeroLogits(torch.nn.Module):
    """A stand-in network without evidence either way: logit 0, ``sigmoid(0) = 0.5``, everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))  # a parameter, so .to(device) has one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x[:, :1]) * self.scale


def test_a_zero_logit_is_background_on_the_way_back_too(tmp_path):
    """The one rule (``pam_monai.engines.postprocessing``): foreground is ``prob > threshold``
    strictly, so a logit of 0 is background. Resized back to a frame's pixels the probability is
    still exactly 0.5, and the mask must still be empty, as on the network's grid."""
    items = _one_frame(tmp_path, 256, 512)
    CasePredictor(ZeroLogits(), items, "cityscapes", str(tmp_path / "out"), save_probabilities=True).run()
    mask = np.asarray(Image.open(tmp_path / "out" / "aachen_000000_000019_vehicles.png"))
    prob = np.load(tmp_path / "out" / "aachen_000000_000019_prob.npy")
    assert prob.shape == mask.shape == (256, 512) and np.all(prob == 0.5)
    assert not mask.any()
    # evaluation's way back (on_case_grid) and restore_mask: the same rule
    from pam_monai.engines.data import on_case_grid

    half = np.full((128, 256), 0.5, np.float32)
    cut, _ = on_case_grid(half, np.zeros_like(half), np.zeros((1, 256, 512), np.uint8), "resize")
    assert cut.shape == (256, 512) and not cut.any()
    assert not restore_mask("cityscapes", half, (256, 512)).any()


def test_inference_writes_the_foreground_of_an_rfna_that_returns_reversed_logits(tmp_path):
    """REFERENCE.md section 4: whatever RFNA is trained on, saved files are in foreground polarity.
    An RFNA built with ``foreground_output=False`` (the authors' raw reversed logits, reachable with
    ``--network_options``) writes the same probabilities and masks as the same weights returning
    foreground logits (CasePredictor wraps it), not their complement."""
    from pam_monai.networks import get_network

    frame = tmp_path / "in" / "aachen_000000_000019_leftImg8bit.png"
    frame.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 512, 3)).astype(np.uint8)).save(frame)
    items = [{"case": "aachen_000000_000019", "image": str(frame)}]
    small = {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "features": (4, 8, 8, 16)}
    torch.manual_seed(0)
    foreground = get_network("rfna", **small)
    raw = get_network("rfna", foreground_output=False, **small)
    raw.load_state_dict(foreground.state_dict())
    written = {}
    for name, network in (("foreground", foreground), ("raw", raw)):
        CasePredictor(network, items, "cityscapes", str(tmp_path / name), save_probabilities=True).run()
        mask = np.asarray(Image.open(tmp_path / name / "aachen_000000_000019_vehicles.png"))
        written[name] = (np.load(tmp_path / name / "aachen_000000_000019_prob.npy"), mask)
    prob, mask = written["foreground"]
    assert np.abs(prob - 0.5).max() > 1e-3  # else the complement would look the same
    np.testing.assert_allclose(written["raw"][0], prob, atol=1e-6)
    np.testing.assert_array_equal(written["raw"][1], mask)


@pytest.fixture(scope="module")
def disc_set(tmp_path_factory) -> Path:
    """Own 2-D images (512 x 1024, colour) with the disc as their label."""
    root = tmp_path_factory.mktemp("own2d") / "Dataset905_Disc"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (512, 1024, 3)).astype(np.uint8)).save(
            root / "imagesTr" / f"DISC{i}_0000.png"
        )
        Image.fromarray(true_disc(512, 1024).astype(np.uint8)).save(root / "labelsTr" / f"DISC{i}.png")
    meta = {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "disc": 1},
        "file_ending": ".png",
        "numTraining": 2,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def evaluate(spec, items, threshold: float = 0.5):
    """The bundles' evaluator (train.json's ``validate`` section): CaseDataset, SliceWiseInferer,
    ForegroundMaskd post-processing, CaseMetrics. Returns the metrics' rows and the last output."""
    from monai.engines import SupervisedEvaluator

    loader = torch.utils.data.DataLoader(CaseDataset(items, spec), batch_size=1, shuffle=False)
    metrics = CaseMetrics(prefix="test_")
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=SmoothDisc(),
        inferer=SliceWiseInferer(4, roi_size=spec.crop_size),
        postprocessing=ForegroundMaskd(keys="pred", threshold=threshold),
        val_handlers=[metrics],
    )
    evaluator.run()
    return metrics.rows, evaluator.state.output


def test_own_2d_evaluation_scores_the_mask_inference_writes(disc_set, tmp_path):
    """Own 2-D images resized 8x (512 x 1024 -> 64 x 128): evaluation scores them on their own
    pixels with the mask inference writes for the same case (bilinear probabilities cut there),
    not with a nearest-neighbour staircase of the small mask."""
    spec = get_spec("nnunet", root=disc_set, crop_size=(64, 128))
    assert spec.crop_size == (64, 128) and not spec.volumetric
    items = [
        {
            "case": "DISC0",
            "image": str(disc_set / "imagesTr" / "DISC0_0000.png"),
            "label": str(disc_set / "labelsTr" / "DISC0.png"),
        }
    ]
    sample = CaseDataset(items, spec)[0]
    assert sample["restore"] == "resize" and tuple(sample["label_full"].shape) == (1, 512, 1024)
    rows, output = evaluate(spec, items)
    pred = output[0]["pred"].numpy()
    assert pred.shape == (1, 512, 1024)  # cut on the image's own pixels by the post-processing
    iou, deviation = disc_error(pred[0])
    old = nearest_way_back(small_probabilities(64, 128), (512, 1024))
    old_iou, old_deviation = disc_error(old)
    truth = true_disc(512, 1024)
    old_scored = case_metrics(old, truth)
    print(
        f"evaluation: IoU {old_scored['iou']:.4f} -> {rows[0]['iou']:.4f}, HD95 {old_scored['hd95']:.2f} -> "
        f"{rows[0]['hd95']:.2f} px, max deviation {old_deviation:.2f} -> {deviation:.2f} px"
    )
    assert deviation < 1.0 < 3.0 < old_deviation and iou > 0.995
    assert rows[0]["iou"] == pytest.approx(case_metrics(pred[0], truth)["iou"])
    assert rows[0]["iou"] > old_scored["iou"] and rows[0]["hd95"] < old_scored["hd95"]

    # inference writes the same mask for the same case, at the same threshold
    CasePredictor(SmoothDisc(), items, spec, str(tmp_path / "p"), save_probabilities=True).run()
    mask = np.asarray(Image.open(tmp_path / "p" / "DISC0_seg.png"))
    np.testing.assert_array_equal(mask, pred[0].astype(np.uint8))
    np.testing.assert_array_equal(np.load(tmp_path / "p" / "DISC0_prob.npy") > 0.5, mask > 0)
    # `pam_monai score` of that mask gives the evaluation's numbers
    summary = score_predictions(tmp_path / "p", "nnunet", disc_set, tmp_path / "scored")
    assert summary["iou"]["mean"] == pytest.approx(rows[0]["iou"])
    assert summary["hd95"]["mean"] == pytest.approx(rows[0]["hd95"])
    # ... and at another one
    rows, output = evaluate(spec, items, threshold=0.7)
    CasePredictor(SmoothDisc(), items, spec, str(tmp_path / "q"), threshold=0.7).run()
    mask = np.asarray(Image.open(tmp_path / "q" / "DISC0_seg.png"))
    np.testing.assert_array_equal(mask, output[0]["pred"].numpy()[0].astype(np.uint8))


def test_on_case_grid_restores_probabilities_of_the_small_grid():
    """``on_case_grid(restore="resize")``: a prediction on the image's pixels is scored as it is;
    probabilities on the network's grid are resized bilinearly and cut at the threshold."""
    from pam_monai.engines.data import on_case_grid

    prob = small_probabilities(64, 128)
    truth = true_disc(512, 1024).astype(np.uint8)
    label = np.zeros((64, 128), np.float32)
    pred, full = on_case_grid(prob, label, truth[None], "resize")
    np.testing.assert_array_equal(pred > 0, restore_mask("cityscapes", prob, (512, 1024)) > 0)
    assert full.shape == (512, 1024) and disc_error(pred)[1] < 1.0
    same, _ = on_case_grid(pred, label, truth[None], "resize")
    assert same is pred
    cut, _ = on_case_grid(prob, label, truth[None], "resize", threshold=0.9)
    assert 0 < cut.sum() < pred.sum()
    # a prediction with its channel axis (1 x h x w), as the docstring allows: the same mask
    chan, chan_full = on_case_grid(prob[None], label[None], truth[None], "resize")
    assert chan.shape == chan_full.shape == (1, 512, 1024)
    np.testing.assert_array_equal(chan[0], pred)
