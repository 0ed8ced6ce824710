"""``--precision``: both models under bfloat16 or float16 autocast, float32 the exact reference, and ``auto``.

No GPU is lent to this project's tests, so the lower precisions run on the CPU, where PyTorch's autocast
has them: bfloat16 is what ``auto`` picks on a CPU with native bfloat16, float16 what ``--half`` used to
give on a GPU. Every dtype conversion between the models and the float32 rest of the pipeline (image,
crops, text, pooling, scores, heatmaps, the generator's filters) is exercised, and the answers must match
float32's to the format's precision. ``auto``'s choice is tested with a faked processor and faked timings.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SMALL_CONFIG, scene
from deop import Segmenter, precision
from deop.arguments import config_from_args
from deop.classify import dense_features
from deop.clip.attention import CpuAutocastAttention, blocked_attention, fast_cpu_attention


@pytest.fixture(scope="module")
def bf16(segmenter) -> Segmenter:
    """The session's models (shared weights: precision is autocast, not a copy) at bfloat16."""
    seg = Segmenter(replace(SMALL_CONFIG, precision="bfloat16"), models=segmenter.models)
    assert seg.precision == "bfloat16" and seg.clip.precision == "bfloat16"
    assert seg.clip.model is segmenter.clip.model and seg.proposer.model is segmenter.proposer.model
    return seg


def test_bfloat16_dense_features_agree_with_float32_per_patch(segmenter, bf16):
    image = scene(seed=5)
    full = dense_features(segmenter.clip, image, 224)
    low = dense_features(bf16.clip, image, 224)
    assert low.dtype == torch.float32 and low.shape == full.shape
    assert not torch.equal(low, full)  # autocast ran
    cosine = F.cosine_similarity(full.flatten(1), low.flatten(1), dim=0)
    assert cosine.min() >= 0.999


def test_bfloat16_sam_embedding_within_2_percent(segmenter, bf16):
    from segment_anything import SamPredictor

    image = scene(seed=6)
    embeddings = []
    for proposer in (segmenter.proposer, bf16.proposer):
        predictor = SamPredictor(proposer.model)
        with torch.inference_mode(), proposer.autocast():
            predictor.set_image(image)
        embeddings.append(predictor.features.float())
    full, low = embeddings
    assert not torch.equal(full, low)
    assert ((low - full).norm() / full.norm()).item() < 0.02


def test_blocked_attention_is_attention_whatever_the_blocks():
    """Every block shape (rows with an uneven tail, several groups per block, one score per block) gives
    softmax(q k^T / sqrt(d)) v: a row or a group left out or counted twice fails."""
    q, k, v = (torch.randn(5, 37, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    for scores in (1, 5 * 37, 36 * 37, 37 * 37, 2 * 37 * 37, 10**6):
        torch.testing.assert_close(blocked_attention(q, k, v, scores), expected, atol=1e-5, rtol=1e-5)
    k, v = torch.randn(5, 23, 16), torch.randn(5, 23, 8)  # other keys than queries, values of another width
    for scores in (1, 7 * 23, 2 * 37 * 23):
        torch.testing.assert_close(blocked_attention(q, k, v, scores), F.scaled_dot_product_attention(q, k, v),
                                   atol=1e-5, rtol=1e-5)


def test_blocked_bfloat16_attention_error_with_large_logits():
    """Its scores are rounded to bfloat16 where the stock kernel keeps them in float32: with logits of
    standard deviation about 4 its error against float32 stays within 2.5x the stock bfloat16 kernel's
    (about 2x measured), and no query's output turns away (cosine >= 0.99)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(12, 197, 64, generator=g) * s for s in (2.0, 2.0, 1.0))
    expected = F.scaled_dot_product_attention(q, k, v)
    low = [t.bfloat16() for t in (q, k, v)]
    ours, stock = blocked_attention(*low).float(), F.scaled_dot_product_attention(*low).float()
    error = ((ours - expected).norm() / expected.norm()).item()
    assert 0 < error < 2.5 * ((stock - expected).norm() / expected.norm()).item()
    assert F.cosine_similarity(ours, expected, dim=-1).min() >= 0.99


def test_swapped_attention_is_stock_at_float32_and_close_in_bfloat16():
    stock = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    ours = copy.deepcopy(stock)
    assert fast_cpu_attention(torch.nn.Sequential(ours)) == 1 and isinstance(ours, CpuAutocastAttention)
    assert ours.state_dict().keys() == stock.state_dict().keys()
    x = torch.randn(3, 50, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(ours(x, x, x, need_weights=False)[0], stock(x, x, x, need_weights=False)[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = ours(x, x, x, need_weights=False)
            reference, _ = stock(x, x, x, need_weights=False)
    assert low.dtype == reference.dtype == torch.bfloat16
    assert F.cosine_similarity(low.float(), reference.float(), dim=-1).min() >= 0.999


def test_clip_attention_under_cpu_bfloat16(segmenter, monkeypatch):
    """Under CPU bfloat16 autocast the image tower's attention runs in blocks (``deop.clip.attention``) and
    the text tower's masked attention is stock's, handed a contiguous sequence-first input (on a transposed
    view torch's bfloat16 linear copies its weight per position: 4x slower); at float32 both are stock's."""
    from torch.nn.modules import activation

    from deop.clip import attention

    blocked, stock_inputs = [], []
    stock, ours = activation.F.multi_head_attention_forward, attention.blocked_attention

    def spy_stock(query, *args, **kwargs):
        stock_inputs.append(query.is_contiguous())
        return stock(query, *args, **kwargs)

    def spy_blocked(q, *args, **kwargs):
        blocked.append(q.dtype)
        return ours(q, *args, **kwargs)

    monkeypatch.setattr(activation.F, "multi_head_attention_forward", spy_stock)
    monkeypatch.setattr(attention, "blocked_attention", spy_blocked)
    model = segmenter.clip.model
    image_blocks = len(model.visual.transformer.resblocks)
    crops = torch.rand(3, 3, segmenter.clip.image_size, segmenter.clip.image_size)
    text = segmenter.clip.tokenizer(["a photo of a cat", "a dog"])
    with torch.inference_mode():
        full = model.encode_image(crops)
        model.encode_text(text)
        assert not blocked and stock_inputs  # (the image tower may take torch's fused fast path here)
        stock_inputs.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.encode_image(crops)
            one = model.encode_image(crops[:1])
            assert blocked == [torch.bfloat16] * (2 * image_blocks) and not stock_inputs
            model.encode_text(text)
    assert len(stock_inputs) == len(model.transformer.resblocks) and all(stock_inputs)
    assert F.cosine_similarity(full, low.float()).min() >= 0.99
    assert F.cosine_similarity(low[:1].float(), one.float()).item() >= 0.999  # batched as one at a time


@pytest.fixture(scope="module")
def results(segmenter, bf16):
    """(float32, bfloat16) results of the same image, vocabulary and weights."""
    # NMS off: a random SAM's masks overlap so much that NMS would leave one segment to compare
    image, vocabulary = scene(seed=21), "sky, grass, red ball, brown box, tree"
    options = {"box_nms_thresh": 1.0, "max_masks": 8, "templates": "single"}
    return (segmenter.segment(image, vocabulary, method="both", **options),
            bf16.segment(image, vocabulary, method="both", **options))


def test_bfloat16_masks_are_produced_and_classified_end_to_end(results):
    full, low = results
    assert low.settings["precision"] == "bfloat16" and full.settings["precision"] == "float32"
    assert low.similarity.dtype == np.float32 and low.similarity.shape == full.similarity.shape
    assert low.methods.keys() == {"one-pass", "crop"}
    for method in low.methods.values():
        assert method.label_map.dtype == np.int32
        assert len(method.segments) > 1 and all(isinstance(s.score, float) for s in method.segments)
        assert all(0 <= s.label < 5 for s in method.segments)
    assert low.to_dict()["settings"]["precision"] == "bfloat16"  # JSON-serialisable, precision recorded
    np.testing.assert_allclose(low.similarity, full.similarity, atol=0.02)


def test_precisions_do_not_share_cached_stages(segmenter, bf16, results):
    """bfloat16's proposals, dense maps and text embeddings are its own: a float32 request after a
    bfloat16 one (the same image and models) still gets float32's exact answer."""
    assert bf16.clip.key != segmenter.clip.key
    image, vocabulary = scene(seed=21), "sky, grass, red ball, brown box, tree"
    again = segmenter.segment(image, vocabulary, method="one-pass", box_nms_thresh=1.0, max_masks=8,
                              templates="single")
    np.testing.assert_array_equal(again.similarity, results[0].similarity)


@pytest.mark.slow
def test_float16_matches_float32_to_its_precision(segmenter):
    """What ``--half`` gave on a GPU, now ``--precision float16`` on any device (autocast on this CPU)."""
    half = Segmenter(replace(SMALL_CONFIG, precision="float16"), models=segmenter.models)
    image, vocabulary = scene(seed=21), "sky, grass, red ball, brown box, tree"
    options = {"box_nms_thresh": 1.0, "max_masks": 8, "templates": "single"}
    full = segmenter.segment(image, vocabulary, method="both", **options)
    low = half.segment(image, vocabulary, method="both", **options)
    assert low.settings["precision"] == "float16" and low.similarity.dtype == np.float32
    np.testing.assert_allclose(low.similarity, full.similarity, atol=5e-3)
    for name in full.methods:
        assert len(low.methods[name].segments) > 1


# -- auto -------------------------------------------------------------------------------------------------
def _never(p: str) -> float:
    raise AssertionError(f"nothing should be measured, asked for {p}")


def test_a_processor_without_bfloat16_gets_float32_unmeasured(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: False)
    assert precision.supported("cpu") == ()
    choice = precision.choose("cpu", _never)
    assert choice.precision == "float32" and choice.seconds == {}


@pytest.mark.parametrize("bf16_seconds, expected", [(0.5, "bfloat16"), (0.95, "float32"), (1.3, "float32")])
def test_a_processor_with_bfloat16_gets_what_measured_faster(monkeypatch, bf16_seconds, expected):
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: True)
    asked = []

    def measure(p: str) -> float:
        asked.append(p)
        return {"float32": 1.0, "bfloat16": bf16_seconds}[p]

    choice = precision.choose("cpu", measure)
    assert choice.precision == expected and asked == ["float32", "bfloat16"] * precision.ROUNDS  # alternating
    assert choice.seconds == {"float32": 1.0, "bfloat16": bf16_seconds}


def test_cpu_bfloat16_comes_from_the_processors_flags():
    assert precision.cpu_has_bfloat16(frozenset({"avx512f", "avx512_bf16"}))
    assert precision.cpu_has_bfloat16(frozenset({"amx_bf16", "amx_tile"}))
    assert not precision.cpu_has_bfloat16(frozenset({"avx512f", "avx512bw", "avx2"}))


def test_cuda_takes_bfloat16_where_supported_else_measures_float16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.choose("cuda", _never).precision == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.choose("cuda:0", {"float32": 1.0, "float16": 0.4}.get).precision == "float16"
    assert precision.choose("cuda:0", {"float32": 1.0, "float16": 1.1}.get).precision == "float32"


def test_segmenter_auto_measures_both_models_once_at_load(monkeypatch, segmenter):
    """With a faked processor and faked timings: a CPU without bfloat16 runs float32 unmeasured; with it, the
    models run what measured faster, and the choice is measured once per device and models."""
    from deop.models import ModelCache

    def loaded() -> dict:
        """The session's loaded models without any precision already chosen (a CLI test run before this one
        leaves auto's choice for these models in the shared cache), so that this choice is made afresh."""
        return {k: v for k, v in segmenter.models._models.items() if k[0] != "precision"}

    models = ModelCache()
    models._models = loaded()
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: False)
    monkeypatch.setattr(precision, "timed", lambda *a, **k: _never("anything"))
    seg = Segmenter(replace(SMALL_CONFIG, precision="auto"), models=models)
    seg.load()
    assert seg.precision == "float32" and seg.proposer.precision == "float32"

    models._models = loaded()
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: True)
    calls = []

    def timed(device, p, runs, warmup=True):
        assert len(runs) == 2  # a CLIP pass and a proposal-encoder pass
        for run in runs:
            run()
        calls.append(p)
        return {"float32": 2.0, "bfloat16": 1.0}[p]

    monkeypatch.setattr(precision, "timed", timed)
    seg = Segmenter(replace(SMALL_CONFIG, precision="auto"), models=models)
    seg.load()
    assert seg.precision == "bfloat16" and seg.clip.precision == "bfloat16" and seg.proposer.precision == "bfloat16"
    assert seg.precision_choice.seconds == {"float32": 2.0, "bfloat16": 1.0}
    _ = Segmenter(replace(SMALL_CONFIG, precision="auto"), models=models).precision
    assert calls == ["float32", "bfloat16"] * precision.ROUNDS  # measured once per device and models


def test_the_option_and_its_environment_variable(monkeypatch):
    import argparse

    from deop.arguments import add_model_arguments
    from deop.errors import OptionError

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert config_from_args(parser.parse_args([]), False).precision == "auto"
    assert config_from_args(parser.parse_args(["--precision", "float32"]), False).precision == "float32"
    monkeypatch.setenv("DEOP_PRECISION", "bfloat16")
    assert config_from_args(parser.parse_args([]), False).precision == "bfloat16"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "double"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--half"])  # gone: --precision float16
    with pytest.raises(OptionError, match="precision"):
        replace(SMALL_CONFIG, precision="int8")


# -- where the precision is shown -------------------------------------------------------------------------
def test_the_latency_text_says_the_precision_is_both_methods(results):
    from deop import ui

    full, low = results
    assert "Precision: bfloat16" in ui.latency_markdown(low) and "both methods alike" in ui.latency_markdown(low)
    assert "Precision: float32 (the exact reference)" in ui.latency_markdown(full)


def test_bench_records_carry_the_precision(bf16):
    from deop.bench.measure import Bench, synthetic_image
    from deop.bench.report import format_table

    bench = Bench(bf16, repeats=1, warmup=0)
    records = [r.to_dict() for r in bench.proposals_at_counts(presets=("fast",), targets=(3,), points_per_side=2,
                                                              image=synthetic_image(256))]
    assert [r["method"] for r in records] == ["stock", "deop"]
    assert {r["precision"] for r in records} == {"bfloat16"}
    assert "bfloat16 against stock's float32" in format_table(records)


def test_bench_compares_the_proposal_stage_alone():
    import argparse

    from deop.commands.bench import add_parser, plan, steps

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--only-proposals", "--proposal-masks", "30", "--precision", "float32"])
    p = plan(args)
    assert p["only_proposals"] and p["proposal_counts"] == {"presets": ("fast",), "targets": (30,)}
    assert steps(p) == 1 and config_from_args(args, False).precision == "float32"
