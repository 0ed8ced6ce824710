"""Classification: pooling, scoring and the crop baseline against open_clip's own preprocessing."""

from __future__ import annotations

import numpy as np
import open_clip
import torch
from PIL import Image

from deop.classify import (
    cell_counts,
    clip_grid,
    crop_batch_size,
    crop_boxes,
    dense_features,
    dense_labels,
    dense_similarity,
    encode_crops,
    image_tensor,
    pool_segments,
    probabilities,
)
from deop.proposers import resolve_overlaps


def test_crop_baseline_on_whole_image_equals_encode_image(clip):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    props = resolve_overlaps([np.ones((224, 224), bool)])
    ours = encode_crops(clip, image, props, margin=0.1)
    _, _, preprocess = open_clip.create_model_and_transforms(clip.name, pretrained=None)
    pixels = preprocess(Image.fromarray(image))[None].to(clip.device)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(clip.model.encode_image(pixels), dim=-1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_crop_baseline_blanks_outside_the_mask(clip):
    """Pixels outside a mask do not influence its crop embedding."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    mask = np.zeros((96, 128), bool)
    mask[20:60, 30:90] = True
    props = resolve_overlaps([mask])
    other = image.copy()
    other[~mask] = 255 - other[~mask]
    torch.testing.assert_close(encode_crops(clip, image, props, margin=0.2),
                               encode_crops(clip, other, props, margin=0.2))


def test_crop_batches_give_the_same_embeddings(clip):
    image = np.random.default_rng(2).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    masks = [np.zeros((64, 64), bool) for _ in range(5)]
    for i, m in enumerate(masks):
        m[i * 10: i * 10 + 12, 5: 40 + i] = True
    props = resolve_overlaps(masks)
    torch.testing.assert_close(encode_crops(clip, image, props, batch_size=2),
                               encode_crops(clip, image, props, batch_size=32), atol=1e-5, rtol=0)


def test_crop_batches_by_device_unless_asked(clip, monkeypatch):
    """0 (the option's default) is 8 crops a batch on a CPU, 32 on a GPU; any other value is taken as is,
    and encode_crops batches by it."""
    assert crop_batch_size(0, torch.device("cpu")) == 8
    assert crop_batch_size(0, torch.device("cuda")) == crop_batch_size(0, torch.device("mps")) == 32
    assert crop_batch_size(3, torch.device("cpu")) == crop_batch_size(3, torch.device("cuda")) == 3
    image = np.random.default_rng(3).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    props = resolve_overlaps([np.eye(64, k=k, dtype=bool) | np.eye(64, k=k + 1, dtype=bool) for k in range(0, 40, 2)])
    batches = []
    encode = clip.model.encode_image
    monkeypatch.setattr(clip.model, "encode_image", lambda x: batches.append(len(x)) or encode(x))
    for requested in (0, 6):
        batches.clear()
        encode_crops(clip, image, props, batch_size=requested)
        size = crop_batch_size(requested, clip.device)
        assert batches == [size] * (len(props) // size) + [len(props) % size] * bool(len(props) % size)
    assert len(props) == 20 and len(batches) == 4


def test_a_read_only_image_is_copied_before_torch_reads_it(monkeypatch):
    """torch warns on a read-only array (the app's cached images are shared, read-only): it gets a copy."""
    image = np.random.default_rng(4).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    expected = image_tensor(image, torch.device("cpu"))
    image.flags.writeable = False
    seen = []
    from_numpy = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda a: seen.append(a.flags.writeable) or from_numpy(a))
    assert torch.equal(image_tensor(image, torch.device("cpu")), expected) and seen == [True]


def test_crop_boxes_grow_by_the_margin_and_stay_inside():
    boxes = np.array([[10, 20, 30, 60], [0, 0, 100, 50]])
    out = crop_boxes(boxes, 0.5, (50, 100))
    assert out.tolist() == [[0, 0, 40, 50], [0, 0, 100, 50]]


def test_cell_counts_partition_each_segment():
    seg = np.full((37, 53), -1, np.int32)
    seg[:20, :30] = 0
    seg[20:, 10:] = 1
    counts = cell_counts(seg, 2, (5, 7))
    assert counts.shape == (2, 35)
    assert counts.sum(dim=1).tolist() == [600.0, 17 * 43]
    assert counts[0].reshape(5, 7)[-1].sum() == 0  # segment 0 never reaches the last grid row


def test_pooling_is_the_normalised_weighted_sum():
    torch.manual_seed(0)
    feats = torch.randn(8, 4, 6)
    seg = np.full((40, 60), -1, np.int32)
    seg[:10, :10] = 0  # exactly grid cell (0, 0)
    seg[20:40, 30:60] = 1  # exactly the cells of rows 2-3, cols 3-5
    props = resolve_overlaps([seg == 1, seg == 0])
    pooled = pool_segments(feats, props)
    # segments are numbered largest first: 0 is the 20x30 block, 1 is the 10x10 corner
    expected0 = feats[:, 2:4, 3:6].sum(dim=(1, 2))
    expected1 = feats[:, 0, 0]
    torch.testing.assert_close(pooled[0], expected0 / expected0.norm())
    torch.testing.assert_close(pooled[1], expected1 / expected1.norm())


def test_probabilities_are_a_softmax_over_scaled_cosines():
    emb = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    p = probabilities(emb, text, 100.0)
    torch.testing.assert_close(p, torch.softmax(100 * emb @ text.T, dim=-1))
    assert probabilities(emb[:0], text).shape == (0, 4)


def test_dense_features_shape_follows_aspect(clip):
    image = np.zeros((120, 200, 3), np.uint8)
    feats = dense_features(clip, image, 224)
    assert clip_grid((120, 200), 224, 16) == (8, 14)
    assert feats.shape == (clip.model.visual.output_dim, 8, 14)


def test_dense_labels_threshold_and_shape():
    torch.manual_seed(0)
    sim = torch.randn(3, 4, 5) * 0.01  # logits within about ±3: no probability reaches 0.95
    labels, prob = dense_labels(sim, (33, 47))
    assert labels.shape == prob.shape == (33, 47)
    assert set(np.unique(labels)) <= {0, 1, 2} and prob.max() < 0.95
    none, _ = dense_labels(sim, (33, 47), threshold=0.95)
    assert (none == -1).all()


def test_dense_similarity_is_cosine():
    torch.manual_seed(0)
    feats = torch.randn(16, 2, 3)
    text = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    sim = dense_similarity(feats, text)
    manual = text @ torch.nn.functional.normalize(feats[:, 1, 2], dim=0)
    torch.testing.assert_close(sim[:, 1, 2], manual)
