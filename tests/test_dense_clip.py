"""Dense CLIP: the plain path reproduces open_clip exactly, severance keeps tokens apart."""

from __future__ import annotations

import pytest
import torch

from deop.clip.dense import _run_blocks, encode_dense, resize_pos_embed
from deop.clip.severance import SEVERANCE_VARIANTS, Severance


@pytest.fixture(scope="module")
def model(clip):
    return clip.model


def randn(model, *shape: int) -> torch.Tensor:
    """Random input on the model's device (the CPU here; a GPU with DEOP_TEST_DEVICE=cuda)."""
    return torch.randn(*shape, device=next(model.parameters()).device)


def test_plain_variant_reproduces_encode_image(model):
    torch.manual_seed(1)
    x = randn(model, 2, 3, 224, 224)
    with torch.inference_mode():
        expected = model.encode_image(x)
        patches, cls = encode_dense(model, x, "none", return_cls=True)
    assert patches.shape == (2, model.visual.output_dim, 14, 14)
    torch.testing.assert_close(cls, expected, atol=1e-5, rtol=0)


def test_position_resize_is_identity_at_native_grid(model):
    pos = model.visual.positional_embedding
    assert resize_pos_embed(pos, (14, 14)) is pos


def test_position_resize_keeps_class_slot_and_changes_grid(model):
    pos = model.visual.positional_embedding
    resized = resize_pos_embed(pos, (20, 28))
    assert resized.shape == (1 + 20 * 28, pos.shape[1])
    torch.testing.assert_close(resized[0], pos[0])


@pytest.mark.parametrize("variant", ["deop", "maskclip"])
def test_severed_block_keeps_each_token_to_itself(model, variant):
    """Perturbing one input token of the severed block changes only that token's output."""
    torch.manual_seed(2)
    x = randn(model, 1, 50, model.visual.transformer.width)
    block_only = _last_block_transformer(model)
    with torch.inference_mode():
        out = _run_blocks(block_only, x, SEVERANCE_VARIANTS[variant], n_severed=1)
        x2 = x.clone()
        x2[0, 17] += 3.0
        out2 = _run_blocks(block_only, x2, SEVERANCE_VARIANTS[variant], n_severed=1)
    changed = (out2 - out).abs().amax(dim=-1)[0]
    assert changed[17] > 1e-3
    others = torch.cat([changed[:17], changed[18:]])
    assert others.max().item() == 0.0


def test_plain_block_mixes_tokens(model):
    """Control for the test above: without severance a perturbation spreads to every token."""
    torch.manual_seed(2)
    x = randn(model, 1, 50, model.visual.transformer.width)
    block_only = _last_block_transformer(model)
    with torch.inference_mode():
        out = _run_blocks(block_only, x, SEVERANCE_VARIANTS["none"], n_severed=1)
        x2 = x.clone()
        x2[0, 17] += 3.0
        out2 = _run_blocks(block_only, x2, SEVERANCE_VARIANTS["none"], n_severed=1)
    assert ((out2 - out).abs().amax(dim=-1)[0] > 0).all()


def test_deop_block_formula(model):
    """The severed block is exactly 0.2 * x + out_proj(v(ln_1 x)), then the kept FFN."""
    block = model.visual.transformer.resblocks[-1]
    torch.manual_seed(3)
    x = randn(model, 1, 10, model.visual.transformer.width)
    attn = block.attn
    with torch.inference_mode():
        v = torch.nn.functional.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)[2]
        y = 0.2 * x + attn.out_proj(v)
        expected = y + block.mlp(block.ln_2(y))
        got = _run_blocks(_last_block_transformer(model), x, SEVERANCE_VARIANTS["deop"], 1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", list(SEVERANCE_VARIANTS))
def test_every_variant_at_high_resolution(model, variant):
    x = randn(model, 1, 3, 320, 448)
    with torch.inference_mode():
        out = encode_dense(model, x, variant)
    assert out.shape == (1, model.visual.output_dim, 20, 28)
    assert torch.isfinite(out).all()


def test_more_severed_blocks_change_the_output(model):
    x = randn(model, 1, 3, 224, 224)
    with torch.inference_mode():
        one = encode_dense(model, x, "deop", n_severed=1)
        three = encode_dense(model, x, "deop", n_severed=3)
    assert not torch.allclose(one, three)


def test_bad_inputs_are_clear_errors(model):
    with pytest.raises(ValueError, match="multiples of the patch size"):
        encode_dense(model, randn(model, 1, 3, 225, 224))
    with pytest.raises(ValueError, match="unknown severance variant"):
        encode_dense(model, randn(model, 1, 3, 224, 224), "nope")
    with pytest.raises(ValueError, match="n_severed"):
        encode_dense(model, randn(model, 1, 3, 224, 224), n_severed=0)


def test_custom_spec_is_accepted(model):
    spec = Severance("kk", 0.5, True)
    with torch.inference_mode():
        out = encode_dense(model, randn(model, 1, 3, 224, 224), spec)
    assert out.shape[-2:] == (14, 14)


def _last_block_transformer(model):
    """A transformer holding only the last block, so _run_blocks severs exactly that block."""

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.resblocks = torch.nn.ModuleList([model.visual.transformer.resblocks[-1]])
            self.batch_first = getattr(model.visual.transformer, "batch_first", True)

    return One()
