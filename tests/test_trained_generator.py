"""DeOP's trained mask generator on random weights: the official pre-processing against its formula, the
network's shapes and strides, the query masks' mappings to the image and to a patch grid re-derived by
hand, its parameter names against the released checkpoint's key list, and the proposal family's
segments tied back to their queries."""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from deop.config import ProposalConfig
from deop.errors import OptionError
from deop.proposers import Proposer, get_proposer
from deop.proposers.base import MaskSet, ProposerFamily, ProposerSpec
from deop.proposers.deop_trained import binarise
from deop.trained import keymap
from deop.trained.generator import (
    QueryMasks,
    preprocess,
    resized_shape,
    sine_position,
)

SPEC = get_proposer("deop-trained")
# PIXEL_MEAN and PIXEL_STD of the official Base-COCOStuff164K-171.yaml: ImageNet's, on RGB 0-255
IMAGENET_MEAN = np.array([123.675, 116.280, 103.530])
IMAGENET_STD = np.array([58.395, 57.120, 57.375])


@pytest.fixture(scope="module")
def generator():
    """The registry's generator on its seeded random weights, built once for the module."""
    return SPEC.family.build(SPEC, True, None, False)


@pytest.fixture(scope="module")
def small(generator):
    """The same network (weights shared) run at a 64 px short side: the tests' images are small."""
    model = copy.copy(generator)
    model.short_side = 64
    return model


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_the_test_resize_is_detectron2s_formula():
    """Short side to 512 unless the long side would pass 2560, each side rounded half up; worked out here in
    exact fractions."""
    def expected(h, w, short, longest):
        scale = Fraction(short, min(h, w))
        nh, nw = h * scale, w * scale
        if max(nh, nw) > longest:
            nh, nw = nh * Fraction(longest) / max(nh, nw), nw * Fraction(longest) / max(nh, nw)
        return math.floor(nh + Fraction(1, 2)), math.floor(nw + Fraction(1, 2))

    for h, w in ((300, 400), (400, 300), (480, 640), (333, 777), (512, 512), (100, 1000), (1000, 100), (7, 3),
                 (1024, 1025), (1025, 1024)):  # the last two land on 512.5: half rounds up
        assert resized_shape(h, w) == expected(h, w, 512, 2560), (h, w)
    assert resized_shape(300, 400) == (512, 683)
    assert resized_shape(100, 1000) == (256, 2560)  # the long side caps it


def test_preprocess_normalises_with_imagenet_statistics_and_zero_pads_to_32():
    image = photo(50, 70)
    pixels, resized = preprocess(image, short_side=50)
    assert resized == (50, 70) and pixels.shape == (1, 3, 64, 96)
    expected = (image.astype(np.float64) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(pixels[0, :, :50, :70].permute(1, 2, 0).numpy(), expected, rtol=1e-6, atol=1e-5)
    assert not pixels[0, :, 50:, :].any() and not pixels[0, :, :, 70:].any()  # zeros after normalising
    assert abs(float(pixels[0, 0, 0, 0]) * 58.395 + 123.675 - image[0, 0, 0]) < 1e-3


def test_preprocess_resizes_with_pil_bilinear_to_the_short_side():
    image = photo(60, 90, seed=1)
    pixels, resized = preprocess(image, short_side=40, max_size=2560)
    assert resized == (40, 60) and pixels.shape[-2:] == (64, 64)
    ref = np.asarray(Image.fromarray(image).resize((60, 40), Image.BILINEAR)).astype(np.float64)
    expected = (ref - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(pixels[0, :, :40, :60].permute(1, 2, 0).numpy(), expected, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess(image.astype(np.float32))


def test_backbone_strides_and_res5_multi_grid(generator):
    """DeepLab stem then res2..res5 at strides 4, 8, 16, 32: res5 keeps its stride (RES5_DILATION 1) and
    dilates its three blocks 1, 2, 4."""
    backbone = generator.backbone
    assert [c.kernel_size for c in (backbone.stem.conv1, backbone.stem.conv2, backbone.stem.conv3)] == [(3, 3)] * 3
    assert backbone.stem.conv1.stride == (2, 2) and backbone.stem.conv3.out_channels == 128
    assert [len(getattr(backbone, f"res{i}")) for i in (2, 3, 4, 5)] == [3, 4, 23, 3]
    res5 = backbone.res5
    assert [b.conv2.dilation for b in res5] == [(1, 1), (2, 2), (4, 4)]
    assert [b.conv2.padding for b in res5] == [(1, 1), (2, 2), (4, 4)]
    assert res5[0].conv2.stride == (2, 2) and res5[0].conv1.stride == (1, 1)  # stride in the 3x3 conv
    with torch.inference_mode():
        features = backbone(torch.zeros(1, 3, 64, 96))
    assert {k: tuple(v.shape[1:]) for k, v in features.items()} == {
        "res2": (256, 16, 24), "res3": (512, 8, 12), "res4": (1024, 4, 6), "res5": (2048, 2, 3)}


@pytest.mark.parametrize("size", [(70, 90), (37, 101)])
def test_query_masks_shapes_for_images_that_are_not_multiples_of_32(small, size):
    image = photo(*size, seed=2)
    with torch.inference_mode():
        queries = small.query_masks(image)
    resized = resized_shape(*size, 64)
    padded = tuple(-(-s // 32) * 32 for s in resized)
    assert queries.resized_size == resized and queries.padded_size == padded and queries.image_size == size
    assert queries.logits.shape == (100, padded[0] // 4, padded[1] // 4) and queries.logits.dtype == torch.float32
    assert queries.pixels.shape == (1, 3, *padded)
    probs = queries.probabilities()
    assert probs.shape == (100, *size) and 0 <= float(probs.min()) and float(probs.max()) <= 1
    grid = (padded[0] // 16, padded[1] // 16)
    assert queries.logits_at(grid).shape == (100, *grid) and queries.probabilities_at(grid).shape == (100, *grid)
    assert torch.isfinite(queries.logits).all()


def linear_queries(h4=16, w4=20, resized=(50, 70), image=None, a=0.11, b=-0.07) -> QueryMasks:
    """Query masks whose logits are a*row + b*col + query/10: bilinear resampling of a linear function is
    that function at the source coordinate (away from the borders), so every mapping can be written down."""
    rows = torch.arange(h4, dtype=torch.float32)[:, None]
    cols = torch.arange(w4, dtype=torch.float32)[None, :]
    logits = torch.stack([a * rows + b * cols + q / 10 for q in range(3)])
    return QueryMasks(logits, torch.zeros(1, 3, 4 * h4, 4 * w4), (4 * h4, 4 * w4), resized, image or resized)


def test_probabilities_upsample_to_the_padded_input_crop_then_sigmoid():
    """Each output pixel (y, x) reads the stride-4 logits at ((y + 0.5) / 4 - 0.5, (x + 0.5) / 4 - 0.5):
    half-pixel centres over the padded input, the crop taken at the top left."""
    q = linear_queries()
    probs = q.probabilities().numpy()
    assert probs.shape == (3, 50, 70)
    ys, xs = np.mgrid[2:46, 2:66]  # away from the clamped borders
    for k in range(3):
        logit = 0.11 * ((ys + 0.5) / 4 - 0.5) - 0.07 * ((xs + 0.5) / 4 - 0.5) + k / 10
        np.testing.assert_allclose(probs[k][ys, xs], 1 / (1 + np.exp(-logit)), atol=1e-5)
    np.testing.assert_allclose(q.probabilities(index=slice(1, 2)).numpy(), probs[1:2], atol=1e-7)


def test_probabilities_resize_to_the_output_after_the_sigmoid():
    """To an image twice the resized size: the cropped sigmoid masks resized bilinearly (sigmoid first, as
    the official code resizes its final, already combined map)."""
    q = linear_queries(image=(100, 140))
    at_resized = linear_queries().probabilities()
    out = q.probabilities().numpy()
    assert out.shape == (3, 100, 140)
    y, x = 41, 77  # reads the resized masks at (20.25, 38.25)
    r = at_resized.numpy()[:, 20:22, 38:40]
    expected = (r[:, 0, 0] * 0.75 * 0.75 + r[:, 0, 1] * 0.75 * 0.25 + r[:, 1, 0] * 0.25 * 0.75
                + r[:, 1, 1] * 0.25 * 0.25)
    np.testing.assert_allclose(out[:, y, x], expected, atol=1e-6)


def test_logits_at_a_patch_grid_resize_the_logits_bilinearly():
    """Block 11 of the trained CLIP reads the logits at the patch grid (a quarter of the stride-4 grid):
    cell g reads logit position 4g + 1.5, before any sigmoid."""
    q = linear_queries()
    grid = q.logits_at((4, 5)).numpy()
    gy, gx = np.mgrid[1:3, 1:4]
    for k in range(3):
        np.testing.assert_allclose(grid[k][gy, gx], 0.11 * (4 * gy + 1.5) - 0.07 * (4 * gx + 1.5) + k / 10, atol=1e-5)


def test_probabilities_at_a_grid_take_the_sigmoid_first():
    """The classification-anchor decoder's masks: sigmoid at stride 4, then resized; cell g averages the
    sigmoids at positions 4g + 1 and 4g + 2 of each axis."""
    q = linear_queries()
    grid = q.probabilities_at((4, 5)).numpy()
    sig = q.logits.sigmoid().numpy()
    for gy, gx in ((1, 1), (2, 3)):
        ry, rx = 4 * gy + 1, 4 * gx + 1
        expected = sig[:, ry:ry + 2, rx:rx + 2].mean(axis=(1, 2))
        np.testing.assert_allclose(grid[:, gy, gx], expected, atol=1e-6)


def test_sine_position_encoding_is_detrs_normalised_formula():
    """Channel 2m of each half is sin(p / T^(2m/F)) and 2m+1 cos of the same; p = (i + 1) / (n + 1e-6) * 2 pi;
    y's half first."""
    pos = sine_position(torch.zeros(2, 7, 3, 5), features=8)
    assert pos.shape == (2, 16, 3, 5)
    for y, x in ((0, 0), (2, 4), (1, 3)):
        py, px = (y + 1) / (3 + 1e-6) * 2 * math.pi, (x + 1) / (5 + 1e-6) * 2 * math.pi
        want = []
        for p in (py, px):
            for m in range(4):
                f = 10000 ** (2 * m / 8)
                want += [math.sin(p / f), math.cos(p / f)]
        np.testing.assert_allclose(pos[1, :, y, x].numpy(), want, atol=1e-5)


def test_the_generators_parameters_are_the_key_lists_generator_part(generator):
    """Every name and shape of our generator is one of the released checkpoint's (through the key map), and
    the generator part of the checkpoint is exactly our generator."""
    expected = keymap.expected_keys()
    ours = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
    theirs = {keymap.PARTS["generator"].rename(k): s for k, s in expected.items()
              if keymap.part_of(k) == "generator"}
    assert len(theirs) == 676 and ours == theirs
    split = keymap.split_state(expected)
    assert sum(map(len, split.values())) == len(expected) == 1020
    assert {k: len(v) for k, v in split.items()} == {"generator": 676, "clip": 308, "prompt": 6, "cal": 4 + 20 + 5,
                                                     "criterion": 1}


def test_the_key_list_holds_the_learned_positions_of_blocks_one_to_five_only():
    expected = keymap.expected_keys()
    learned = sorted(k for k in expected if k.endswith("learned_position"))
    assert learned == sorted(["clip_adapter.clip_model.visual.learned_position"]
                             + [f"clip_adapter.clip_model.visual.transformer.resblocks.{i}.learned_position"
                                for i in range(1, 6)])
    assert all(expected[k] == (577, 768) for k in learned)
    assert expected["clip_adapter.clip_model.visual.positional_embedding"] == (197, 768)
    assert expected["decoder.outlayer.multihead_attn_my.in_proj_weight"] == (1536, 512)
    assert "decoder.outlayer.multihead_attn_my.out_proj.weight" not in expected  # the output layer has none
    assert expected["query_embedding.weight"] == (100, 512)
    assert expected["clip_adapter.prompt_learner.prefix_prompt"] == (16, 512)


def test_a_part_registered_later_renames_its_keys():
    keymap.register_part("cal", ("decoder.", "query_embedding."), keymap.prefix_renamer(
        (("decoder.outlayer.", "out."), ("decoder.", "body."), ("query_embedding.", "queries."))))
    try:
        names = keymap.part_state(keymap.expected_keys(), "cal")
        assert "out.norm1.weight" in names and "body.layers.0.linear1.weight" in names and "queries.weight" in names
        with pytest.raises(ValueError, match="overlaps"):
            keymap.register_part("other", ("decoder.layers.",))
    finally:
        keymap.register_part("cal", ("decoder.", "query_embedding."), keymap.prefix_renamer(
            (("decoder.", "decoder."), ("query_embedding.", "query_embedding."))))
    with pytest.raises(KeyError, match="belongs to no part"):
        keymap.split_state({"pixel_mean": 0})


@pytest.fixture(scope="module")
def once(small):
    """The small generator with its query masks of one image computed once (each run costs seconds here)."""
    image = photo(48, 72, seed=3)
    with torch.inference_mode():
        queries = small.query_masks(image)
    model = copy.copy(small)
    model.query_masks = lambda img, short_side=None: queries
    return model, image


def test_the_family_gives_proposals_tied_to_their_queries(once):
    """Each segment j came from query source[j]: its pixels lie in that query's binary mask, its score is
    the mean probability inside that mask, and the raw query masks travel with the proposals."""
    model, image = once
    proposer = Proposer(SPEC, model)
    proposals = proposer.propose(image, ProposalConfig(max_masks=0))
    queries = proposals.queries
    assert isinstance(queries, QueryMasks) and proposals.raw_count == 100 and proposals.prompter is None
    assert len(proposals.source) == len(proposals) > 0 and len(set(proposals.source.tolist())) == len(proposals)
    probs = queries.probabilities()
    for j, q in enumerate(proposals.source):
        binary = (probs[q] > 0.5).numpy()
        assert binary[proposals.mask(j)].all()
        assert proposals.scores[j] == pytest.approx(float(probs[q][probs[q] > 0.5].mean()), abs=1e-5)
    limited = proposer.propose(image, ProposalConfig(max_masks=5))
    areas = (probs > 0.5).sum(dim=(1, 2)).numpy()
    means = np.where(areas > 0, (probs * (probs > 0.5)).sum(dim=(1, 2)).numpy() / np.maximum(areas, 1), 0)
    best5 = set(np.argsort(-means, kind="stable")[:5].tolist())
    assert set(limited.source.tolist()) <= best5 and len(limited) <= 5


def test_binarise_scores_masks_by_their_mean_probability():
    q = linear_queries()
    masks = binarise(q)
    probs = q.probabilities()
    assert len(masks) == 3 and masks.queries is q and masks.image_size == (50, 70)
    for k in range(3):
        inside = probs[k] > 0.5
        np.testing.assert_array_equal(masks.full_mask(k), inside.numpy())
        assert masks.areas[k] == int(inside.sum())
        assert masks.predicted_iou[k] == pytest.approx(float(probs[k][inside].mean()) if inside.any() else 0.0)
    empty = binarise(QueryMasks(torch.full((2, 4, 4), -9.0), torch.zeros(1, 3, 16, 16), (16, 16), (16, 16), (16, 16)))
    assert list(empty.areas) == [0, 0] and list(empty.predicted_iou) == [0, 0] and empty.crops[0].size == 0


def test_a_click_on_the_trained_generators_proposals_is_a_clear_error(once):
    model, image = once
    proposer = Proposer(SPEC, model)
    proposals = proposer.propose(image, ProposalConfig(max_masks=3))
    with pytest.raises(OptionError, match="takes no point prompts"):
        proposer.point_mask(proposals, [(5.0, 5.0, True)])


def test_random_weights_are_the_same_on_every_build_and_leave_the_callers_rng_alone(generator):
    before = torch.random.get_rng_state()
    again = SPEC.family.build(SPEC, True, None, False)
    assert torch.equal(torch.random.get_rng_state(), before)
    for name in ("backbone.res4.7.conv2.weight", "predictor.query_embed.weight", "pixel_decoder.layer_4.weight"):
        assert torch.equal(again.state_dict()[name], generator.state_dict()[name])


def test_it_runs_at_its_test_size_only(generator):
    assert SPEC.input_size_for(1024) == 512 and SPEC.family.input_size(generator) == 512
    assert SPEC.family.at_input_size(generator, 512) is generator
    with pytest.raises(OptionError, match="short side 512"):
        SPEC.family.at_input_size(generator, 1024)
    assert SPEC.in_app and SPEC.title.startswith("DeOP's trained generator")


class _FixedFamily(ProposerFamily):
    """A family returning fixed masks, to follow the source indices through the limit and the overlap rule."""

    name = package = "fixed"

    def available(self) -> bool:
        return True

    def generate(self, model, image, config, deadline=None) -> MaskSet:
        return model


def test_source_follows_segments_through_the_limit_and_the_overlap_rule():
    big = np.zeros((20, 20), bool)
    big[:, :] = True
    mid = np.zeros((20, 20), bool)
    mid[5:15, 5:15] = True
    small_ = np.zeros((20, 20), bool)
    small_[8:10, 8:10] = True
    hidden = mid.copy()  # same pixels as mid, painted over by it or painting over it: one of them disappears
    empty = np.zeros((20, 20), bool)
    masks = MaskSet.from_masks([small_, empty, big, mid, hidden], scores=np.array([0.9, 0.8, 0.5, 0.7, 0.1]))
    proposer = Proposer(ProposerSpec("fixed", "fixed", _FixedFamily()), masks)
    proposals = proposer.propose(np.zeros((20, 20, 3), np.uint8), ProposalConfig(max_masks=0))
    assert proposals.raw_count == 5
    for j, src in enumerate(proposals.source):
        original = masks.full_mask(int(src))
        assert proposals.mask(j).any() and original[proposals.mask(j)].all()
    assert sorted(proposals.source.tolist()) == [0, 2, 4]  # big, then mid painted over by hidden, then small_
    limited = proposer.propose(np.zeros((20, 20, 3), np.uint8), ProposalConfig(max_masks=2))
    assert sorted(limited.source.tolist()) == [0]  # the two best are small_ (0.9) and empty (0.8)
    limited = proposer.propose(np.zeros((20, 20, 3), np.uint8), ProposalConfig(max_masks=3))
    assert sorted(limited.source.tolist()) == [0, 3] and limited.source[np.argmax(limited.areas)] == 3
