"""Model loading: the cache, devices, and clear errors when weights cannot be had."""

from __future__ import annotations

import pytest
import torch

from deop.clip.model import build_clip
from deop.errors import OptionError, WeightsError
from deop.models import ModelCache, resolve_device
from deop.proposers import PROPOSERS, get_proposer


def build_sam(kind: str, random_weights: bool = True):
    spec = get_proposer(kind)
    return spec.family.build(spec, random_weights, None, True)


def test_auto_device_is_cpu_without_a_gpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(OptionError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_models_load_once_per_key():
    cache = ModelCache()
    built = []

    def build():
        built.append(1)
        return object()

    a = cache.get(("x", 1), build)
    b = cache.get(("x", 1), build)
    c = cache.get(("x", 2), build)
    assert a is b and a is not c and len(built) == 2 and len(cache) == 2


def test_segmenter_models_are_shared(segmenter):
    from deop import Segmenter

    other = Segmenter(segmenter.config)
    assert other.clip is segmenter.clip and other.proposer.model is segmenter.proposer.model


def test_tiny_sam_needs_random_weights():
    with pytest.raises(OptionError, match="only with random weights"):
        build_sam("tiny", random_weights=False)
    with pytest.raises(OptionError, match="unknown proposal model 'vit_x'"):
        build_sam("vit_x")
    assert {"vit_b", "vit_l", "vit_h"} <= set(PROPOSERS)


def test_unknown_clip_model_is_a_clear_error():
    with pytest.raises(OptionError, match="unknown CLIP model"):
        build_clip("ViT-Nope", None, torch.device("cpu"))


def test_clip_weights_offline_give_the_clear_error(monkeypatch):
    """With the Hugging Face hub offline and an empty cache, the real loading path fails clearly."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(WeightsError) as info:
        build_clip("ViT-B-16-quickgelu", "openai", torch.device("cpu"))
    message = str(info.value)
    assert "ViT-B-16-quickgelu" in message and "--random-weights" in message


def test_sam_checkpoint_loads_through_the_safe_path(tmp_path):
    """A checkpoint written from a random tiny SAM's state dict loads back into vit_b's loader path."""
    from deop import weights

    model = build_sam("tiny")
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path)
    state = weights.load_state_dict(path)
    fresh = get_proposer("tiny").family._new(get_proposer("tiny"))
    fresh.load_state_dict(state)
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("budget", [1, 10**12])  # one head at a time, and all heads at once
def test_lean_attention_equals_sam_attention(budget):
    """The chunked attention is SAM's own, to float rounding, with non-zero relative position tables."""
    from segment_anything.modeling.image_encoder import Attention

    from deop.proposers.lean_attention import LeanAttention, lean_sam_attention

    torch.manual_seed(0)
    stock = Attention(32, num_heads=4, use_rel_pos=True, input_size=(8, 8))
    with torch.no_grad():
        for p in stock.parameters():
            p.normal_()
    x = torch.randn(2, 8, 8, 32)
    expected = stock(x)
    holder = torch.nn.Sequential(stock)
    lean_sam_attention(holder, budget_bytes=budget)
    assert isinstance(stock, LeanAttention)
    torch.testing.assert_close(stock(x), expected, rtol=1e-5, atol=1e-5)


def test_built_sam_uses_lean_attention(tiny_sam):
    from segment_anything.modeling.image_encoder import Attention

    from deop.proposers.lean_attention import LeanAttention

    attentions = [m for m in tiny_sam.image_encoder.modules() if isinstance(m, Attention)]
    assert attentions and all(isinstance(m, LeanAttention) for m in attentions)
    from deop.proposers.lean_attention import stock_attention

    with stock_attention(tiny_sam):  # the bench's reference: SAM exactly as shipped, then back
        assert all(type(m) is Attention for m in attentions)
    assert all(type(m) is LeanAttention for m in attentions)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_weights_repeat_across_builds_and_leave_the_callers_rng_alone():
    """--random-weights runs are reproducible from one launch to the next (same masks, labels, timings)."""
    cpu = torch.device("cpu")
    state = torch.get_rng_state()
    sam_a, sam_b = build_sam("tiny"), build_sam("tiny")
    clip_a, clip_b = build_clip("ViT-B-16-quickgelu", None, cpu), build_clip("ViT-B-16-quickgelu", None, cpu)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_weights(sam_a, sam_b) and _same_weights(clip_a.model, clip_b.model)
    # and they are random, not zeros: two blocks differ
    blocks = clip_a.model.visual.transformer.resblocks
    assert not torch.equal(blocks[0].attn.in_proj_weight, blocks[1].attn.in_proj_weight)
