"""Text encoding trimmed to the prompts' length: the same embeddings as open_clip's full-context
``encode_text``, and the full path for any model where trimming would not be exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deop.clip.text import TextEmbeddingCache, encode_text
from deop.presets import TEMPLATES
from deop.vocabulary import Vocabulary, apply_templates

PROMPTS = ["a photo of a cat.", "a bad photo of the fire hydrant.", "x", "art of the " + "very " * 120 + "long name."]


def tokens_for(clip, prompts):
    return clip.tokenizer(prompts).to(clip.device)


@pytest.mark.parametrize("prompts", [PROMPTS, PROMPTS[:1], PROMPTS[:3]])
def test_trimmed_encoding_equals_full_context(clip, prompts, monkeypatch):
    tokens = tokens_for(clip, prompts)
    with torch.inference_mode():
        full = F.normalize(clip.model.encode_text(tokens).float(), dim=-1)
        calls = []
        monkeypatch.setattr(clip.model, "encode_text", lambda t: calls.append(t) or full, raising=False)
        trimmed = F.normalize(encode_text(clip.model, tokens).float(), dim=-1)
    assert calls == []  # the trimmed path ran, not a fall-back
    assert trimmed.shape == full.shape
    assert torch.allclose(trimmed, full, atol=1e-5), (trimmed - full).abs().max()


def test_trimming_shortens_short_prompts_only(clip, monkeypatch):
    seen = []
    original = clip.model.transformer.forward
    monkeypatch.setattr(clip.model.transformer, "forward", lambda x, **k: seen.append(x.shape[1]) or original(x, **k))
    with torch.inference_mode():
        encode_text(clip.model, tokens_for(clip, PROMPTS[:2]))
        encode_text(clip.model, tokens_for(clip, PROMPTS))
    short = int(tokens_for(clip, PROMPTS[:2]).argmax(dim=-1).max()) + 1
    assert seen == [short, clip.model.context_length] and short < 16


def test_other_pooling_falls_back_to_the_models_own_encoder(clip, monkeypatch):
    tokens = tokens_for(clip, PROMPTS[:2])
    sentinel = torch.full((2, 7), 3.0)
    monkeypatch.setattr(clip.model, "text_pool_type", "last")
    monkeypatch.setattr(clip.model, "encode_text", lambda t: sentinel, raising=False)
    assert encode_text(clip.model, tokens) is sentinel


@pytest.mark.parametrize("batch_size", [256, 7])
def test_cache_embeddings_equal_a_plain_full_context_ensemble(clip, batch_size):
    # Names of different lengths, so that sorting prompts by length reorders them across batches.
    names = ["traffic light on a long pole", "cat", "dog", "fire hydrant", "a"]
    cached = TextEmbeddingCache(batch_size=batch_size).vocabulary(clip, Vocabulary.from_names(names), "ensemble")
    with torch.inference_mode():  # the textbook recipe, one name at a time over CLIP's whole context
        expected = torch.stack([
            F.normalize(F.normalize(clip.model.encode_text(tokens_for(clip, apply_templates(n, TEMPLATES["ensemble"])))
                                    .float(), dim=-1).mean(dim=0), dim=0) for n in names])
    assert torch.allclose(cached, expected, atol=1e-5), (cached - expected).abs().max()
