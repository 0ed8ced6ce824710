"""Dense CLIP: the plain path reproduces open_clip exactly, severance keeps tokens apart."""

from __future__ import annotations

import numpy as np
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


def _naclip_official_prior(gh: int, gw: int, std: float) -> torch.Tensor:
    """NACLIP's attention addition as its repository computes it (clip/model.py, gaussian_window and
    get_attention_addition), re-derived: a (2gh-1) x (2gw-1) Gaussian window of offsets scaled by
    1 / (std * sqrt 2), convolved ('same') with a one-hot map of every patch, a zero row and column for the
    class token."""
    import math

    axes = []
    for dim in (2 * gh - 1, 2 * gw - 1):
        start = -(dim - 1) / 2.0
        c = 1 / (std * math.sqrt(2))
        axes.append(torch.linspace(start * c, (start + dim - 1) * c, steps=dim))
    window = torch.exp(-(torch.stack(torch.meshgrid(*axes, indexing="ij")) ** 2).sum(0))
    one_hot = torch.einsum("ij,kl->ijkl", torch.eye(gh), torch.eye(gw)).permute(0, 3, 1, 2).contiguous()
    out = torch.nn.functional.conv2d(one_hot.view(-1, gh, gw).unsqueeze(1), window[None, None], padding="same")
    out = out.squeeze(1).view(gh * gw, gh * gw)
    out = torch.vstack([torch.zeros((1, gh * gw)), out])
    return torch.hstack([torch.zeros((gh * gw + 1, 1)), out])


@pytest.mark.parametrize("grid", [(3, 4), (14, 14), (5, 2)])
def test_naclip_prior_is_its_published_formula(grid):
    from deop.clip.dense import neighbourhood_prior

    ours = neighbourhood_prior(grid, 5.0)
    torch.testing.assert_close(ours, _naclip_official_prior(*grid, 5.0), atol=1e-6, rtol=0)
    # exp(-d^2 / (2 sigma^2)) by hand at one pair: patches (0, 0) and (2, 1) of the grid, tokens 1 and 1 + 2*gw + 1
    gh, gw = grid
    if gh > 2 and gw > 1:
        assert ours[1, 1 + 2 * gw + 1].item() == pytest.approx(np.exp(-5 / 50))
    assert ours[0].abs().sum() == 0 and ours[:, 0].abs().sum() == 0


def test_naclip_block_is_the_published_one(model):
    """The severed block equals NACLIP's reduced architecture (no residual, no FFN) with k-k attention plus
    the prior, computed as its custom_attn does (tokens first, heads folded into the batch)."""
    from deop.clip.dense import _severed_block

    block = model.visual.transformer.resblocks[-1]
    grid = (4, 5)
    torch.manual_seed(4)
    x = randn(model, 1, 1 + grid[0] * grid[1], model.visual.transformer.width)
    attn = block.attn
    with torch.inference_mode():
        y = block.ln_1(x).transpose(0, 1)  # LND
        n, bsz, d = y.shape
        heads, hd = attn.num_heads, d // attn.num_heads
        q, k, v = torch.nn.functional.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        k = k.contiguous().view(-1, bsz * heads, hd).transpose(0, 1)
        v = v.contiguous().view(-1, bsz * heads, hd).transpose(0, 1)
        weights = torch.bmm(k, k.transpose(1, 2)) * hd**-0.5 + _naclip_official_prior(*grid, 5.0).to(x)[None]
        out = torch.bmm(weights.softmax(dim=-1), v).transpose(0, 1).contiguous().view(-1, bsz, d)
        expected = attn.out_proj(out).transpose(0, 1)
        got = _severed_block(block, x, SEVERANCE_VARIANTS["naclip"], grid)
        ablation = _severed_block(block, x, SEVERANCE_VARIANTS["naclip-noprior"], grid)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    assert cosine.min().item() > 0.999999
    assert not torch.allclose(ablation, expected, atol=1e-3)


def test_official_position_rule_samples_at_scale_g_plus_a_tenth(model):
    pos = model.visual.positional_embedding
    resized = resize_pos_embed(pos, (20, 28), rule="official")
    table = pos[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(table, scale_factor=(20.1 / 14, 28.1 / 14), mode="bicubic",
                                               align_corners=False)
    torch.testing.assert_close(resized[1:], expected.permute(0, 2, 3, 1).reshape(20 * 28, -1))
    assert not torch.allclose(resized, resize_pos_embed(pos, (20, 28)))
    assert resize_pos_embed(pos, (14, 14), rule="official") is pos


def test_the_app_compares_the_published_variants_only():
    from deop.clip.severance import COMPARED_VARIANTS

    assert COMPARED_VARIANTS == ("deop", "maskclip", "sclip", "clearclip", "naclip", "none")
    assert SEVERANCE_VARIANTS["naclip-noprior"].ablation and SEVERANCE_VARIANTS["naclip"].neighbourhood == 5.0
