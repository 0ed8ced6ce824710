"""DeOP's trained mask generator: MaskFormer with a frozen ResNet-101c backbone, in plain PyTorch.

Facts from the official code (CongHan0808/DeOP at 614454c, run by ``scripts/deop_verifycoco.sh``; the
backbone is detectron2 v0.6's DeepLab ResNet; ``model_final_keys.txt`` cites the lines):

- Input: one RGB uint8 image resized so its short side is 512 px and its long side at most 2560 px
  (detectron2's ``ResizeShortestEdge``, PIL bilinear, ``int(x + 0.5)`` rounding), normalised with ImageNet's
  mean and std on 0-255 values (``PIXEL_MEAN``/``PIXEL_STD`` of ``Base-COCOStuff164K-171.yaml``), then padded
  with zeros at the bottom and right to a multiple of 32 (``ImageList.from_tensors``, ``SIZE_DIVISIBILITY``
  32). The same padded tensor feeds CLIP in the trained classifier, so it travels with the masks.
- Backbone: DeepLab stem (3x3 convs 3-64-64-128, the first of stride 2, then a 3x3 max-pool of stride 2),
  bottleneck stages of 3/4/23/3 blocks, stride in the 3x3 conv (``STRIDE_IN_1X1`` False), FrozenBatchNorm
  everywhere. ``RES5_DILATION`` is left at detectron2's default 1, so res5 keeps its stride 2 (output
  stride 32, hence the padding to 32) and its three blocks' 3x3 convs are dilated 1, 2 and 4
  (``RES5_MULTI_GRID``).
- Pixel decoder (``BasePixelDecoder``): FPN-like top-down path over res5..res2 with GroupNorm(32), 256
  channels, nearest upsampling, then a 3x3 conv giving the 256-d mask features at stride 4.
- Transformer predictor: res5 projected 2048 -> 256, a 2-D sine position encoding (128 frequencies per axis,
  normalised to 2 pi), no encoder layer, 6 post-norm DETR decoder layers (100 queries, 8 heads, FFN 2048)
  and the final LayerNorm, then a 3-layer MLP mask embedding; mask logits = embedding . mask features.
  The class head (an MLP 256-1024-512) is kept so the checkpoint loads strictly; it is never run: the
  trained model overwrites its output.

Interface (the trained classifier builds on these names; keep them stable):

- ``PIXEL_MEAN``, ``PIXEL_STD``, ``SIZE_DIVISIBILITY``, ``TEST_SHORT_SIDE``, ``TEST_MAX_SIZE``,
  ``NUM_QUERIES``: the constants above.
- ``resized_shape(h, w, short_side, max_size) -> (h', w')``: the test-time resize.
- ``preprocess(image, short_side, max_size, device) -> (pixels, (h', w'))``: the padded (1, 3, Hp, Wp)
  normalised tensor and the resized image's size inside it.
- ``MaskGenerator``: the network (``build_generator()`` makes one); ``forward(pixels) -> logits``
  (B, 100, Hp/4, Wp/4); ``query_masks(image) -> QueryMasks`` runs pre-processing and network on one image
  at ``short_side`` (an attribute, 512 by default).
- ``QueryMasks``: ``logits`` (100, Hp/4, Wp/4), ``pixels`` (the input tensor), ``padded_size`` (Hp, Wp),
  ``resized_size`` (h', w'), ``image_size`` (H, W) of the image given; ``probabilities(size, index)``: each
  query's sigmoid mask at the image's size, mapped the official way (logits upsampled bilinearly to the
  padded input, the padding cropped, sigmoid, resized bilinearly to the output size; the official code
  resizes its final map after the sigmoid, and since its class combination is linear in the masks, that
  is the same as resizing each mask); ``logits_at(grid)``: the logits resized bilinearly to a grid, what
  block 11 of the trained CLIP does before its sigmoid; ``probabilities_at(grid)``: sigmoid first, then
  resized bilinearly, what the classification-anchor decoder takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)
SIZE_DIVISIBILITY = 32
TEST_SHORT_SIDE = 512
TEST_MAX_SIZE = 2560
NUM_QUERIES = 100
HIDDEN_DIM = 256
MASK_DIM = 256
NUM_HEADS = 8
FFN_DIM = 2048
DECODER_LAYERS = 6
RES_BLOCKS = (3, 4, 23, 3)  # ResNet-101
RES5_MULTI_GRID = (1, 2, 4)
STEM_CHANNELS = 128
CLASS_EMBED = (1024, 512)  # the unused class head's hidden and output widths (EMBED_HIDDEN_DIM, EMBEDDING_DIM)


def resized_shape(h: int, w: int, short_side: int = TEST_SHORT_SIDE, max_size: int = TEST_MAX_SIZE
                  ) -> tuple[int, int]:
    """The size detectron2's ``ResizeShortestEdge`` gives an h x w image: short side to `short_side`, then
    scaled down if the long side passes `max_size`, each side rounded half up."""
    scale = short_side / min(h, w)
    new_h, new_w = (short_side, scale * w) if h < w else (scale * h, short_side)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def preprocess(image: np.ndarray, short_side: int = TEST_SHORT_SIDE, max_size: int = TEST_MAX_SIZE,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, tuple[int, int]]:
    """An RGB uint8 (H, W, 3) image as the generator's input: resized, normalised, zero-padded to a
    multiple of 32. Returns the (1, 3, Hp, Wp) float32 tensor and the resized size (h', w') inside it."""
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    h, w = resized_shape(image.shape[0], image.shape[1], short_side, max_size)
    if (h, w) != image.shape[:2]:
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    pixels = torch.from_numpy(np.array(image, copy=True)).to(device).permute(2, 0, 1).float()
    mean = torch.tensor(PIXEL_MEAN, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=pixels.device).view(3, 1, 1)
    pixels = (pixels - mean) / std
    pad_h, pad_w = (-h) % SIZE_DIVISIBILITY, (-w) % SIZE_DIVISIBILITY
    return F.pad(pixels, (0, pad_w, 0, pad_h), value=0.0)[None], (h, w)


def logits_at(logits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(Q, gh, gw) mask logits resized bilinearly (half-pixel centres) to a grid over the padded input, as
    block 11 of the trained CLIP resizes them to its patch grid before the sigmoid."""
    return F.interpolate(logits[None], size=tuple(grid), mode="bilinear", align_corners=False)[0]


def probabilities_at(logits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(Q, gh, gw) sigmoid masks resized bilinearly to a grid over the padded input, as the trained model
    resizes them for its classification-anchor decoder (sigmoid first, then resize)."""
    return F.interpolate(logits.sigmoid()[None], size=tuple(grid), mode="bilinear", align_corners=False)[0]


def padded_probabilities(logits: torch.Tensor, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(Q, h, w) sigmoid masks at the model input: logits upsampled bilinearly to the padded input, cropped to
    the resized image's `size`, sigmoid."""
    up = F.interpolate(logits[None], size=tuple(padded), mode="bilinear", align_corners=False)[0]
    return up[:, :size[0], :size[1]].sigmoid()


@dataclass
class QueryMasks:
    """The 100 query masks of one image, as the generator gives them (see the module docstring)."""

    logits: torch.Tensor  # (Q, Hp/4, Wp/4) float32, on the generator's device
    pixels: torch.Tensor  # (1, 3, Hp, Wp): the normalised, padded input both networks take
    padded_size: tuple[int, int]
    resized_size: tuple[int, int]
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return self.logits.shape[0]

    def probabilities(self, size: tuple[int, int] | None = None, index: slice | torch.Tensor | None = None
                      ) -> torch.Tensor:
        """(k, H, W) sigmoid masks of the queries `index` (all by default) at `size` (the image's)."""
        logits = self.logits if index is None else self.logits[index]
        prob = padded_probabilities(logits, self.padded_size, self.resized_size)
        size = tuple(size or self.image_size)
        if size != tuple(self.resized_size):
            prob = F.interpolate(prob[None], size=size, mode="bilinear", align_corners=False)[0]
        return prob

    def logits_at(self, grid: tuple[int, int]) -> torch.Tensor:
        return logits_at(self.logits, grid)

    def probabilities_at(self, grid: tuple[int, int]) -> torch.Tensor:
        return probabilities_at(self.logits, grid)


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms (buffers, as detectron2 stores them)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


class ConvNorm(nn.Conv2d):
    """A convolution followed by its norm, named as detectron2's ``Conv2d`` (``weight``, ``norm.*``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1,
                 norm: nn.Module | None = None, bias: bool = False):
        super().__init__(cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                         bias=bias)
        self.norm = norm
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # detectron2's c2_msra_fill
        if bias:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return x if self.norm is None else self.norm(x)


def _frozen(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> ConvNorm:
    return ConvNorm(cin, cout, kernel, stride, dilation, norm=FrozenBatchNorm2d(cout))


class DeepLabStem(nn.Module):
    def __init__(self, channels: int = STEM_CHANNELS):
        super().__init__()
        self.conv1 = _frozen(3, channels // 2, 3, stride=2)
        self.conv2 = _frozen(channels // 2, channels // 2, 3)
        self.conv3 = _frozen(channels // 2, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, width: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.shortcut = _frozen(cin, cout, 1, stride=stride) if cin != cout else None
        self.conv1 = _frozen(cin, width, 1)
        self.conv2 = _frozen(width, width, 3, stride=stride, dilation=dilation)
        self.conv3 = _frozen(width, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """ResNet-101c: the DeepLab stem and four bottleneck stages; returns res2..res5 (strides 4 to 32)."""

    def __init__(self, blocks: tuple[int, ...] = RES_BLOCKS):
        super().__init__()
        self.stem = DeepLabStem()
        cin, cout, width = STEM_CHANNELS, 256, 64
        for i, n in enumerate(blocks):
            stride = 1 if i == 0 else 2
            dilations = RES5_MULTI_GRID if i == 3 else (1,) * n
            stage = [Bottleneck(cin if b == 0 else cout, cout, width, stride if b == 0 else 1, dilations[b])
                     for b in range(n)]
            self.add_module(f"res{i + 2}", nn.Sequential(*stage))
            cin, cout, width = cout, cout * 2, width * 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        out = {}
        for name in ("res2", "res3", "res4", "res5"):
            x = getattr(self, name)(x)
            out[name] = x
        return out


def _gn_conv(cin: int, kernel: int) -> ConvNorm:
    return ConvNorm(cin, HIDDEN_DIM, kernel, norm=nn.GroupNorm(32, HIDDEN_DIM))


class PixelDecoder(nn.Module):
    """res5..res2 top-down (lateral 1x1 conv plus the coarser level upsampled by nearest, then a 3x3 conv),
    then the mask features: 256 channels at stride 4."""

    def __init__(self):
        super().__init__()
        for i, channels in enumerate((256, 512, 1024), start=1):
            self.add_module(f"adapter_{i}", _gn_conv(channels, 1))
            self.add_module(f"layer_{i}", _gn_conv(HIDDEN_DIM, 3))
        self.layer_4 = _gn_conv(2048, 3)
        self.mask_features = ConvNorm(HIDDEN_DIM, MASK_DIM, 3, bias=True)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        y = F.relu(self.layer_4(features["res5"]))
        for i, name in ((3, "res4"), (2, "res3"), (1, "res2")):
            lateral = getattr(self, f"adapter_{i}")(features[name])
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = F.relu(getattr(self, f"layer_{i}")(y))
        return self.mask_features(y)


def sine_position(x: torch.Tensor, features: int = HIDDEN_DIM // 2, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised 2-D sine encoding of a (B, C, h, w) map with no padding mask: (B, 2 * features, h, w),
    the y half first, each half alternating sin and cos over the frequencies."""
    b, _, h, w = x.shape
    eps, scale = 1e-6, 2 * math.pi
    y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=x.device) / (h + eps) * scale
    x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=x.device) / (w + eps) * scale
    dim_t = torch.arange(features, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / features)
    pos_x = x_embed[:, None] / dim_t  # (w, F)
    pos_y = y_embed[:, None] / dim_t  # (h, F)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((pos_y[:, None, :].expand(h, w, features), pos_x[None, :, :].expand(h, w, features)), dim=2)
    return pos.permute(2, 0, 1)[None].expand(b, -1, -1, -1).to(x.dtype)


class DecoderLayer(nn.Module):
    """DETR's post-norm decoder layer: self-attention, cross-attention to the image, FFN, each followed by
    its residual and LayerNorm; the query positions are added to queries and keys, the image positions to
    the keys."""

    def __init__(self, dim: int = HIDDEN_DIM, heads: int = NUM_HEADS, ffn: int = FFN_DIM):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.multihead_attn = nn.MultiheadAttention(dim, heads)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor
                ) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])
        attended = self.multihead_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + attended)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class QueryDecoder(nn.Module):
    def __init__(self, layers: int = DECODER_LAYERS):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer() for _ in range(layers))
        self.norm = nn.LayerNorm(HIDDEN_DIM)

    def forward(self, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(query_pos)
        for layer in self.layers:
            out = layer(out, memory, pos, query_pos)
        return self.norm(out)


class MLP(nn.Module):
    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class Predictor(nn.Module):
    """The transformer predictor: 100 learned queries attend to res5 and give one mask embedding each."""

    def __init__(self):
        super().__init__()
        self.decoder = QueryDecoder()
        self.query_embed = nn.Embedding(NUM_QUERIES, HIDDEN_DIM)
        self.input_proj = nn.Conv2d(2048, HIDDEN_DIM, 1)
        self.mask_embed = MLP((HIDDEN_DIM, HIDDEN_DIM, HIDDEN_DIM, MASK_DIM))
        self.class_embed = MLP((HIDDEN_DIM, *CLASS_EMBED))  # in the checkpoint; its output is never used
        for p in self.decoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)  # DETR's Transformer._reset_parameters

    def forward(self, res5: torch.Tensor) -> torch.Tensor:
        """(B, 100, 256): the last decoder layer's queries after the final LayerNorm."""
        b = res5.shape[0]
        pos = sine_position(res5).flatten(2).permute(2, 0, 1)
        memory = self.input_proj(res5).flatten(2).permute(2, 0, 1)
        query_pos = self.query_embed.weight[:, None, :].expand(-1, b, -1)
        return self.decoder(memory, pos, query_pos).transpose(0, 1)


class MaskGenerator(nn.Module):
    """Backbone, pixel decoder and predictor; ``forward`` gives (B, 100, Hp/4, Wp/4) mask logits."""

    def __init__(self, blocks: tuple[int, ...] = RES_BLOCKS, short_side: int = TEST_SHORT_SIDE,
                 max_size: int = TEST_MAX_SIZE):
        super().__init__()
        self.backbone = ResNet(blocks)
        self.pixel_decoder = PixelDecoder()
        self.predictor = Predictor()
        self.short_side = short_side
        self.max_size = max_size

    @property
    def device(self) -> torch.device:
        return self.predictor.query_embed.weight.device

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h, w = pixels.shape[-2:]
        if h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY:
            raise ValueError(f"the generator's input must be padded to a multiple of {SIZE_DIVISIBILITY}, "
                             f"got {h} x {w}")
        features = self.backbone(pixels)
        mask_features = self.pixel_decoder(features)
        queries = self.predictor(features["res5"])
        return torch.einsum("bqc,bchw->bqhw", self.predictor.mask_embed(queries), mask_features)

    def query_masks(self, image: np.ndarray, short_side: int | None = None) -> QueryMasks:
        """The query masks of one RGB uint8 image, pre-processed as the official test does."""
        pixels, resized = preprocess(image, short_side or self.short_side, self.max_size, self.device)
        logits = self(pixels)[0]
        return QueryMasks(logits, pixels, tuple(pixels.shape[-2:]), resized, tuple(image.shape[:2]))


def build_generator() -> MaskGenerator:
    """The generator with its initial (random) weights, in eval mode and frozen; the caller seeds them."""
    return MaskGenerator().eval().requires_grad_(False)
