"""The trained model's classifier (issue 23, part B), each step against its formula re-derived here on random
weights: block 11's mask-guided severance, the learned positions at a grid other than 24 x 24, CAL's output
layer and decoder, the learned prompt's layout and read-out, the final combination, the key map."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deop.trained.cal import Cal, proposal_masks, sine_position
from deop.trained.clip_vision import encode_masked, mask_scale, severed_block
from deop.trained.model import (
    DeopHead,
    class_probabilities,
    image_masks,
    label_map,
    query_logits,
    semantic_scores,
    to_ours,
)

KEYS_FILE = Path(__file__).resolve().parent.parent / "deop" / "trained" / "model_final_keys.txt"
HEAD_PARTS = ("clip_adapter.", "decoder.", "query_embedding.")


@pytest.fixture(scope="module")
def classifier():
    from deop.models import MODELS

    return MODELS.trained(torch.device("cpu"), random_weights=True)  # shared with the pipeline's tests


@pytest.fixture(scope="module")
def head(classifier) -> DeopHead:
    return classifier.head


def _randomise_biases(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy whose zero-initialised biases are random, so that every bias term shows in the result."""
    module = copy.deepcopy(module)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def _bilinear_quarter(logits: torch.Tensor) -> torch.Tensor:
    """Bilinear resize by exactly 1/4 with half-pixel centres: output i samples input 4i + 1.5, the mean of
    inputs 4i + 1 and 4i + 2 on each axis."""
    q, h, w = logits.shape
    return logits.reshape(q, h // 4, 4, w // 4, 4)[:, :, 1:3, :, 1:3].mean(dim=(2, 4))


def test_severed_block_is_the_mask_guided_formula(head):
    block = _randomise_biases(head.clip.visual.transformer.resblocks[11])
    gh, gw, c = 3, 5, 768
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1 + gh * gw, c, generator=g)
    logits = 3 * torch.randn(100, 4 * gh, 4 * gw, generator=g)
    s = torch.cat([torch.tensor([100.0]), _bilinear_quarter(logits).sigmoid().sum(dim=0).reshape(-1)])
    scale = mask_scale(logits, (gh, gw))
    assert scale[0] == 100  # the class token: a column of ones for each of the 100 masks
    torch.testing.assert_close(scale, s, rtol=1e-5, atol=1e-4)
    w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    v = F.layer_norm(x, (c,), block.ln_1.weight, block.ln_1.bias) @ w[2 * c:].T + b[2 * c:]
    x1 = x + (s[None, :, None] * v) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    expected = x1 + block.mlp(F.layer_norm(x1, (c,), block.ln_2.weight, block.ln_2.bias))
    with torch.no_grad():
        torch.testing.assert_close(severed_block(block, x, scale), expected, rtol=1e-4, atol=1e-3)


def _resize_table(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The official resize: the patch rows viewed as a square grid (channels first), bicubic, class kept."""
    g = math.isqrt(len(table) - 1)
    if (g, g) == tuple(grid):
        return table
    patches = table[1:].T.reshape(1, -1, g, g)
    patches = F.interpolate(patches, size=grid, mode="bicubic").reshape(-1, grid[0] * grid[1]).T
    return torch.cat([table[:1], patches])


def test_learned_positions_at_a_grid_other_than_24(head):
    """Image 48 x 80 (a 3 x 5 grid): CLIP's 14 x 14 table and the learned 24 x 24 one both resized and added
    before ln_pre; blocks 1-5 add their own resized table to the residual stream before attention."""
    visual, pos = head.clip.visual, head.positions
    grid = (3, 5)
    g = torch.Generator().manual_seed(2)
    pixels = torch.randn(1, 3, 48, 80, generator=g)
    logits = torch.randn(100, 12, 20, generator=g)
    with torch.no_grad():
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.reshape(1, 1, -1), x], dim=1)
        x = x + _resize_table(visual.positional_embedding, grid) + _resize_table(pos.input, grid)
        x = visual.ln_pre(x)
        for i, block in enumerate(visual.transformer.resblocks):
            if 1 <= i <= 5:
                x = x + _resize_table(pos.blocks[str(i)], grid)
            x = severed_block(block, x, mask_scale(logits, grid)) if i == 11 else block(x)
        expected = F.normalize(visual.ln_post(x[0, 1:]) @ visual.proj, dim=-1).reshape(3, 5, -1)
        out = encode_masked(head.clip, pos, pixels, logits)
    assert out.shape == (3, 5, 512)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert pos.at(pos.input, (24, 24)) is pos.input  # at the trained grid the table is used as it is


def test_sine_position_is_detrs_normalised_encoding():
    gh, gw = 3, 4
    pos = sine_position(gh, gw)
    for (i, j, ch) in [(0, 0, 0), (2, 3, 1), (1, 2, 100), (2, 1, 256), (0, 3, 257), (1, 1, 511)]:
        axis, coord, n = (i, gh, ch) if ch < 256 else (j, gw, ch - 256)
        value = (axis + 1) / (coord + 1e-6) * 2 * math.pi / 10000 ** (2 * (n // 2) / 256)
        expected = math.sin(value) if n % 2 == 0 else math.cos(value)
        assert abs(pos[i * gw + j, ch].item() - expected) < 1e-5


def _cal_inputs(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    memory = F.normalize(torch.randn(12, 512, generator=g), dim=-1)
    return (torch.randn(100, 512, generator=g), torch.randn(100, 512, generator=g), memory,
            sine_position(3, 4), torch.rand(100, 12, generator=g))


def test_cal_output_layer_raw_values_and_unnormalised_mask_weights(head):
    out = _randomise_biases(head.cal.out)
    tgt, qpos, memory, pos, masks = _cal_inputs()
    with torch.no_grad():
        t = F.layer_norm(tgt + out.self_attn(tgt + qpos, tgt + qpos, tgt)[0], (512,), out.norm.weight, out.norm.bias)
        w, b = out.read.in_proj_weight, out.read.in_proj_bias
        q = (t + qpos) @ w[:512].T + b[:512]
        k = (memory + pos) @ w[512:1024].T + b[512:1024]
        heads, weights = [], []
        for h in range(8):
            c = slice(64 * h, 64 * h + 64)
            a = (q[:, c] @ k[:, c].T / 8).softmax(dim=-1) * masks
            weights.append(a)
            heads.append(a @ memory[:, c])  # v: the raw CLIP features, no projection
        expected = F.normalize(torch.cat(heads, dim=1), dim=-1)
        got = out(tgt, qpos, memory, pos, masks)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        got_weights = out.weights(t, qpos, memory, pos, masks)
        torch.testing.assert_close(got_weights, torch.stack(weights), rtol=1e-4, atol=1e-6)
        assert (got_weights.sum(dim=-1) < 0.999).any()  # not renormalised after the masks
        out.read.in_proj_weight[1024:].normal_()  # the value third of the projection is never used
        out.read.in_proj_bias[1024:].normal_()
        torch.testing.assert_close(out(tgt, qpos, memory, pos, masks), got)


def test_cal_decoder_layer_then_output_layer(head):
    cal: Cal = head.cal
    layer = cal.layer
    g = torch.Generator().manual_seed(4)
    features = F.normalize(torch.randn(3, 4, 512, generator=g), dim=-1)
    masks = torch.rand(100, 3, 4, generator=g)
    memory, pos, qpos = features.reshape(12, 512), sine_position(3, 4), cal.queries.weight
    with torch.no_grad():
        t = torch.zeros(100, 512)  # targets start at zero; the queries are positions
        t = layer.norm1(t + layer.self_attn(t + qpos, t + qpos, t)[0])
        t = layer.norm2(t + layer.cross_attn(t + qpos, memory + pos, memory)[0])
        t = layer.norm3(t + layer.linear2(F.relu(layer.linear1(t))))
        expected = cal.out(t, qpos, memory, pos, masks.reshape(100, 12))
        torch.testing.assert_close(cal(features, masks), expected, rtol=1e-4, atol=1e-5)
    logits = torch.randn(100, 12, 16, generator=g)
    expected_masks = F.interpolate(logits.sigmoid()[None], size=(3, 4), mode="bilinear")[0]  # sigmoid first
    torch.testing.assert_close(proposal_masks(logits, (3, 4)), expected_masks)


def test_learned_prompt_layout_and_end_token_readout(classifier, head):
    clip, tokenizer, prompts = head.clip, classifier.tokenizer, head.prompts
    emb = clip.token_embedding.weight
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    dot = tokenizer.encode(".")[0]
    for vector, token in ((prompts.start, sot), (prompts.dot, dot), (prompts.end, eot), (prompts.pad, 0)):
        torch.testing.assert_close(vector[0], emb[token])
    names = ["cat", "traffic light", "potted plant with flowers"]
    expected = []
    with torch.no_grad():
        for name in names:
            ids = tokenizer.encode(name)
            seq = torch.cat([prompts.start, prompts.prefix, emb[ids], prompts.dot, prompts.end])
            assert len(seq) == 1 + 16 + len(ids) + 2
            end = len(seq) - 1
            seq = torch.cat([seq, prompts.pad.expand(77 - len(seq), -1)])  # the official fixed 77 tokens
            x = clip.transformer((seq + clip.positional_embedding)[None], attn_mask=clip.attn_mask)
            expected.append(clip.ln_final(x)[0, end] @ clip.text_projection)
        got = classifier.names(names)
    torch.testing.assert_close(got, F.normalize(torch.stack(expected), dim=-1), rtol=1e-4, atol=1e-5)


def test_final_combination():
    g = torch.Generator().manual_seed(5)
    anchors = F.normalize(torch.randn(6, 512, generator=g), dim=-1)
    text = F.normalize(torch.randn(3, 512, generator=g), dim=-1)
    none = F.normalize(torch.randn(1, 512, generator=g), dim=-1)
    logits = query_logits(anchors, text, none)
    torch.testing.assert_close(logits[:, 3], 100 * anchors @ none[0])  # no-object is the last class
    torch.testing.assert_close(logits[:, :3], 100 * anchors @ text.T)
    e = logits.exp() if logits.abs().max() < 80 else (logits - logits.max(dim=1, keepdim=True).values).exp()
    probs = class_probabilities(logits)
    torch.testing.assert_close(probs, (e / e.sum(dim=1, keepdim=True))[:, :3])
    mask_logits = torch.randn(6, 4, 5, generator=g)
    masks = image_masks(mask_logits, (16, 20), (13, 17))
    up = F.interpolate(mask_logits[None], size=(16, 20), mode="bilinear")[0]
    torch.testing.assert_close(masks, up[:, :13, :17].sigmoid())  # upsampled to the padded input, cropped
    scores = semantic_scores(probs, masks)
    for c in range(3):
        torch.testing.assert_close(scores[c], sum(probs[q, c] * masks[q] for q in range(6)))
    full = F.interpolate(scores[None], size=(26, 34), mode="bilinear")[0].argmax(dim=0).numpy()
    assert (label_map(scores, (26, 34), chunk=2) == full).all()  # class chunks change nothing


def _official_keys() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in KEYS_FILE.read_text().splitlines():
        found = re.match(r"^(\S+) \[([0-9,]*)\]$", line)
        if found and found.group(1).startswith(HEAD_PARTS):
            out[found.group(1)] = tuple(int(d) for d in found.group(2).split(",") if d)
    return out


def test_head_keys_map_exactly_onto_the_released_checkpoints(head):
    official = _official_keys()
    ours = {k: tuple(v.shape) for k, v in head.official_state().items()}
    assert ours == official
    assert all(to_ours(k) in head.state_dict() for k in official)


def test_head_loads_strictly_and_names_a_bad_key(head):
    state = {k: torch.randn(v.shape) for k, v in head.official_state().items()}
    other = copy.deepcopy(head)
    other.load_official({**state, "backbone.stem.conv1.weight": torch.zeros(1)})  # not the head's: ignored
    torch.testing.assert_close(other.cal.queries.weight, state["query_embedding.weight"])
    missing = dict(state)
    del missing["decoder.outlayer.norm1.weight"]
    with pytest.raises(KeyError, match="decoder.outlayer.norm1.weight"):
        other.load_official(missing)
    wrong = {**state, "clip_adapter.clip_model.visual.learned_position": torch.zeros(197, 768)}
    with pytest.raises(ValueError, match=r"visual.learned_position.*\(197, 768\)"):
        other.load_official(wrong)
    renamed = dict(state)
    renamed["decoder.outlayer.norm9.weight"] = renamed.pop("decoder.outlayer.norm1.weight")
    with pytest.raises(KeyError, match="norm9"):
        other.load_official(renamed)


def test_the_released_checkpoints_head_parts_load_through_the_checkpoint_loader(tmp_path, monkeypatch):
    """A checkpoint in the released form (detectron2's ``model`` dict and training state beside it; each
    tensor one number broadcast to its shape, so the file stays small) gives the head its CLIP, prompt and
    CAL tensors."""
    from collections import OrderedDict

    from deop.trained import checkpoint, keymap
    from deop.trained.run import load_classifier

    keys = keymap.expected_keys()
    state = OrderedDict((k, torch.full((1,), float(i) / len(keys)).expand(shape) if shape else torch.tensor(0.5))
                        for i, (k, shape) in enumerate(keys.items()))
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 59999}, path)

    def read_only(*args, **kwargs):
        raise OSError("read-only folder")  # keeps the 875 MB safetensors conversion out of the test

    monkeypatch.setattr(checkpoint, "convert", read_only)
    loaded = load_classifier(torch.device("cpu"), False, str(path), str(tmp_path), False)
    head = loaded.head
    for theirs, ours in (("clip_adapter.clip_model.visual.transformer.resblocks.3.learned_position",
                          head.positions.blocks["3"]),
                         ("clip_adapter.clip_model.visual.transformer.resblocks.11.attn.in_proj_bias",
                          head.clip.visual.transformer.resblocks[11].attn.in_proj_bias),
                         ("clip_adapter.prompt_learner.prefix_prompt", head.prompts.prefix),
                         ("clip_adapter.non_object_embedding", head.non_object),
                         ("decoder.outlayer.multihead_attn_my.in_proj_weight", head.cal.out.read.in_proj_weight),
                         ("decoder.layers.0.multihead_attn_my.out_proj.weight",
                          head.cal.layer.cross_attn.out_proj.weight),
                         ("query_embedding.weight", head.cal.queries.weight)):
        assert torch.equal(ours, state[theirs].expand_as(ours)), theirs
    assert loaded.clip_view.pretrained == "model_final.pth" and loaded.key != "deop-trained/random/cpu"


def test_an_overlong_name_is_cut_to_fit_and_named(classifier):
    name = " ".join(["word"] * 70)  # 70 tokens: more than the 58 left beside the 19-token frame
    assert classifier.head.prompts.overlong(classifier.tokenizer, [name, "cat"]) == [name]
    (ids,) = classifier.head.prompts.name_tokens(classifier.tokenizer, [name])
    assert len(ids) == 77 - 19
    with torch.no_grad():
        assert classifier.head.text(classifier.tokenizer, [name]).shape == (1, 512)
