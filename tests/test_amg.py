"""FastMaskGenerator returns the stock generators' records exactly, for SAM v1, MobileSAM and SAM 2.1.

Regimes: (a) every mask passes (thresholds 0, no box NMS) over several batches, (b) thresholds taken from
the random model's own scores so that some but not all masks pass, (c) one layer of crops, (d) the
small-region cleanup with an area that changes masks, (e) no mask passing.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from amg_support import assert_same_records, require_sam2, with_small_masks
from deop.proposers.amg import FastMaskGenerator, MaskSet

# A random decoder's logits lie within about +-0.1, so stock's offset of 1 would make every stability score 0
# and hide any error in it; at 0.02 the scores spread over 0.15-0.9.
OFFSET = 0.02
ALL_PASS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0,
            "stability_score_offset": OFFSET}


@dataclass
class Family:
    name: str          # test id
    family: str        # FastMaskGenerator's
    model: Any
    points: int        # points per side
    downscale: int     # crop_n_points_downscale_factor for regime (c)

    def small_masks(self) -> Family:
        return Family(f"{self.name}-small", self.family, with_small_masks(self.model), self.points, self.downscale)

    def stock(self, **opts):
        if self.family == "sam2":
            from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return SAM2AutomaticMaskGenerator(self.model, output_mode="binary_mask", **opts)
        if type(self.model).__module__.startswith("mobile_sam"):
            from mobile_sam import SamAutomaticMaskGenerator
        else:
            from segment_anything import SamAutomaticMaskGenerator
        return SamAutomaticMaskGenerator(self.model, output_mode="binary_mask", **opts)

    def run(self, image: np.ndarray, cc_extension: bool = False, **opts) -> tuple[list[dict], MaskSet]:
        """Stock's records and ours at equal options. SAM 2's predictor-side hole filling needs sam2's
        CUDA extension: without it (``cc_extension`` False) it is switched off on both, as the project does."""
        opts = {"points_per_side": self.points, **opts}
        stock = self.stock(**opts)
        ours = FastMaskGenerator(self.model, self.family, **opts)
        if self.family == "sam2" and not cc_extension:
            for gen in (stock, ours):
                gen.predictor._transforms.max_hole_area = gen.predictor._transforms.max_sprinkle_area = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = stock.generate(image)
            result = ours.generate(image)
        assert_same_records(expected, result.to_records())
        return expected, result


FAMILIES = ["sam-1024", "sam-256", "mobile_sam", "sam2"]


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request) -> Family:
    """Every family by default; tests for some of them parametrize it (indirectly) with their names."""
    name = request.param
    if name == "sam-1024":
        return Family(name, "sam", request.getfixturevalue("amg_sam"), 4, 2)
    if name == "sam-256":
        return Family(name, "sam", request.getfixturevalue("amg_sam_256"), 6, 1)
    if name == "mobile_sam":
        return Family(name, "sam", request.getfixturevalue("amg_mobile_sam"), 4, 2)
    return Family(name, "sam2", request.getfixturevalue("amg_sam2"), 4, 2)


@pytest.fixture(scope="module")
def all_pass(fam, image_a) -> list[dict]:
    """Regime (a): stock's every mask, also the score sample for (b) and the baseline for (d)."""
    stock, _ = fam.run(image_a, points_per_batch=5, **ALL_PASS)
    return stock


def test_a_all_masks_pass_over_several_batches(fam, all_pass):
    assert len(all_pass) == 3 * fam.points**2  # 3 masks a point; the whole image has no crop edge
    assert len({r["segmentation"].tobytes() for r in all_pass}) > 3


@pytest.mark.parametrize("fam", ["sam-1024", "sam-256"], indirect=True)  # one image for the slow encoders
def test_a_second_image(fam, image_b):
    stock, _ = fam.run(image_b, points_per_batch=7, **ALL_PASS)
    assert len(stock) == 3 * fam.points**2


def test_b_some_masks_pass(fam, image_a, all_pass):
    ious = np.array([r["predicted_iou"] for r in all_pass])
    iou_thresh = float(np.quantile(ious, 0.3))
    stabilities = np.array([r["stability_score"] for r in all_pass if r["predicted_iou"] > iou_thresh])
    stability_thresh = float(np.nanquantile(stabilities, 0.4))
    stock, _ = fam.run(image_a, points_per_batch=5, pred_iou_thresh=iou_thresh,
                       stability_score_thresh=stability_thresh, box_nms_thresh=0.7, stability_score_offset=OFFSET)
    assert 0 < len(stock) < len(all_pass)
    assert min(r["stability_score"] for r in stock) >= stability_thresh > 0


@pytest.mark.parametrize("fam", ["sam-256", "mobile_sam", "sam2"], indirect=True)  # SAM v1 crops at 256 px
def test_c_crop_layer(fam, image_b):
    """On the small-mask variant of the model: the random one's sub-crop masks all touch their crop's edge."""
    stock, _ = fam.small_masks().run(image_b, points_per_batch=6, pred_iou_thresh=0.0,
                                     stability_score_thresh=0.0, crop_n_layers=1,
                                     crop_n_points_downscale_factor=fam.downscale)
    assert len({tuple(r["crop_box"]) for r in stock}) > 1, "masks from a sub-crop too"


def _changes_something(records: list[dict], area: int, remove_small_regions) -> bool:
    return any(remove_small_regions(r["segmentation"], area, mode)[1] for r in records for mode in ("holes", "islands"))


@pytest.mark.parametrize("fam, masks", [("sam-1024", "random"), ("sam-256", "random"), ("sam-256", "small"),
                                        ("mobile_sam", "small")], indirect=["fam"])
def test_d_small_region_cleanup(fam, image_a, masks):
    """SAM v1's post-hoc cleanup (SAM 2's generator has none: see test_d_sam2_predictor_cleanup)."""
    from segment_anything.utils.amg import remove_small_regions

    opts = {"points_per_batch": 5, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.7,
            "stability_score_offset": OFFSET}
    fam = fam if masks == "random" else fam.small_masks()
    without, _ = fam.run(image_a, **opts)
    area = next(a for a in (10, 30, 100, 300, 1000) if _changes_something(without, a, remove_small_regions))
    stock, _ = fam.run(image_a, min_mask_region_area=area, **opts)
    assert [r["segmentation"].tobytes() for r in stock] != [r["segmentation"].tobytes() for r in without]


def _cpu_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sam2.utils.misc.get_connected_components (8-connected labels and per-pixel component areas) in cv2,
    standing in for the CUDA extension this machine lacks."""
    import cv2

    m = mask.to(torch.uint8).cpu().numpy()
    labels, counts = np.zeros(m.shape, np.int32), np.zeros(m.shape, np.int32)
    for i in range(m.shape[0]):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(m[i, 0], connectivity=8)
        areas = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        areas[0] = 0
        labels[i, 0], counts[i, 0] = lab, areas[lab]
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(counts).to(mask.device)


@pytest.mark.parametrize("fam", ["sam2"], indirect=True)
def test_d_sam2_predictor_cleanup(fam, image_a, monkeypatch):
    """SAM 2's min_mask_region_area fills holes and removes sprinkles in the predictor, on both sides."""
    import sam2.utils.misc

    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", _cpu_connected_components)
    opts = {"points_per_batch": 8, **ALL_PASS}
    stock, _ = fam.run(image_a, cc_extension=True, min_mask_region_area=200, **opts)
    without, _ = fam.run(image_a, **opts)
    assert [r["segmentation"].tobytes() for r in stock] != [r["segmentation"].tobytes() for r in without]


def test_e_no_mask_passes(fam, image_a):
    stock, ours = fam.run(image_a, points_per_batch=8, pred_iou_thresh=2.0)
    assert stock == [] and len(ours) == 0 and ours.to_records() == []


def test_e_no_mask_passes_with_crops(amg_sam_256, image_a):
    """Stock fails here (box_area of an empty tensor); ours returns no masks."""
    result = FastMaskGenerator(amg_sam_256, "sam", points_per_side=4, pred_iou_thresh=2.0,
                               crop_n_layers=1).generate(image_a)
    assert len(result) == 0 and result.boxes.shape == (0, 4)


@pytest.mark.parametrize("fam", ["sam2"], indirect=True)
def test_sam2_options(fam, image_a):
    fam.run(image_a, points_per_side=3, points_per_batch=4, use_m2m=True, **ALL_PASS)
    fam.run(image_a, points_per_side=3, points_per_batch=4, multimask_output=False, mask_threshold=0.5, **ALL_PASS)


def test_mask_set_is_consistent(fam, image_a):
    result = FastMaskGenerator(fam.model, fam.family, points_per_side=3, points_per_batch=9,
                               **ALL_PASS).generate(image_a)
    assert len(result) == 27 and result.image_size == image_a.shape[:2]
    assert result.boxes.dtype == np.int64 and result.areas.dtype == np.int64
    assert result.predicted_iou.dtype == result.stability_score.dtype == np.float32
    assert result.point_coords.dtype == np.float64 and result.point_coords.shape == (27, 2)
    for i, crop in enumerate(result.crops):
        x0, y0, x1, y1 = result.boxes[i]
        full = result.full_mask(i)
        assert crop.dtype == bool and full.shape == image_a.shape[:2]
        assert result.areas[i] == full.sum() == crop.sum()
        if crop.size:
            assert crop.shape == (y1 - y0 + 1, x1 - x0 + 1)
            assert np.array_equal(full[y0:y1 + 1, x0:x1 + 1], crop)
    if fam.family == "sam":
        expected = "mobile_sam" if fam.name == "mobile_sam" else "segment_anything"
        assert type(FastMaskGenerator(fam.model, "sam").predictor).__module__.startswith(expected)
    assert FastMaskGenerator(fam.model, fam.family).pred_iou_thresh == (0.8 if fam.family == "sam2" else 0.88)


def test_before_batch_hook_runs_before_every_batch_and_can_stop(amg_sam_256, image_a):
    calls = []
    gen = FastMaskGenerator(amg_sam_256, "sam", points_per_side=4, points_per_batch=5,
                            before_batch=lambda: calls.append(1), **ALL_PASS)
    gen.generate(image_a)
    assert len(calls) == 4  # 16 points in batches of 5
    assert 0 < gen.last_network_seconds <= gen.last_total_seconds

    class Cancelled(Exception):
        pass

    def cancel():
        if len(calls) == 6:
            raise Cancelled
        calls.append(1)

    gen.before_batch = cancel
    with pytest.raises(Cancelled):
        gen.generate(image_a)


def test_float32_points(amg_sam_256, image_a, monkeypatch):
    """The prompt encoder gets float32 points (and float64 ones, as stock sends them, by default)."""
    dtypes = []
    prompt_encoder = amg_sam_256.prompt_encoder
    forward = prompt_encoder.forward

    def spy(points, *args, **kwargs):
        dtypes.append(points[0].dtype)
        return forward(points, *args, **kwargs)

    monkeypatch.setattr(prompt_encoder, "forward", spy)
    result = FastMaskGenerator(amg_sam_256, "sam", points_per_side=4, float32_points=True, **ALL_PASS).generate(image_a)
    assert dtypes == [torch.float32] and len(result) == 48
    FastMaskGenerator(amg_sam_256, "sam", points_per_side=4, **ALL_PASS).generate(image_a)
    assert dtypes == [torch.float32, torch.float64]


def test_keep_embedding_leaves_the_full_image_embedded(amg_sam_256, image_a):
    from segment_anything import SamPredictor

    fresh = SamPredictor(amg_sam_256)
    fresh.set_image(image_a)
    opts = {"points_per_side": 4, "crop_n_layers": 1, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    default = FastMaskGenerator(amg_sam_256, "sam", **opts)
    kept = FastMaskGenerator(amg_sam_256, "sam", keep_embedding=True, **opts)
    assert_same_records(default.generate(image_a).to_records(), kept.generate(image_a).to_records())
    assert not default.predictor.is_image_set
    assert kept.predictor.is_image_set and kept.predictor.original_size == image_a.shape[:2]
    assert torch.equal(kept.predictor.features, fresh.features)


def test_unknown_options_are_refused(amg_sam_256):
    with pytest.raises(TypeError):
        FastMaskGenerator(amg_sam_256, "sam", use_m2m=True)
    with pytest.raises(ValueError):
        FastMaskGenerator(amg_sam_256, "sam3")


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@CUDA
@pytest.mark.parametrize("opts", [{**ALL_PASS, "min_mask_region_area": 50},
                                  {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "crop_n_layers": 1}])
def test_cuda_sam(amg_sam_256, image_a, opts):
    """Masks, boxes and NMS stay on the GPU as in stock: same records there too."""
    model = copy.deepcopy(amg_sam_256).to("cuda")
    Family("sam-256-cuda", "sam", model, 6, 1).small_masks().run(image_a, points_per_batch=16, **opts)


@CUDA
def test_cuda_sam2(image_a):
    require_sam2()
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cuda")
    family = Family("sam2-cuda", "sam2", model, 4, 2)
    family.run(image_a, points_per_batch=8, **ALL_PASS)
    family.small_masks().run(image_a, points_per_batch=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                             crop_n_layers=1, crop_n_points_downscale_factor=2)
