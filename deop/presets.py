"""Class lists of the standard benchmarks and CLIP prompt-template ensembles.

The names are the CLIP-friendly spellings that open-vocabulary segmentation papers evaluate with
(MaskCLIP, SCLIP, CAT-Seg): "potted plant" rather than the dataset's "pottedplant", because CLIP's text
encoder was trained on natural captions. The orders are the datasets' label orders, so that a label
index from this tool means the same class as in those papers' evaluation code.

The mappings are read-only views: they are shared by every caller in the process.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

VOC: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
    "tv monitor",
)

COCO: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

ADE20K: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

CITYSCAPES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

PRESETS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "voc": VOC, "coco": COCO, "ade20k": ADE20K, "cityscapes": CITYSCAPES,
})

PRESET_TITLES: Mapping[str, str] = MappingProxyType({
    "voc": f"PASCAL VOC ({len(VOC)})",
    "coco": f"COCO ({len(COCO)})",
    "ade20k": f"ADE20K ({len(ADE20K)})",
    "cityscapes": f"Cityscapes ({len(CITYSCAPES)})",
})

# "ensemble" is the seven-template set the CLIP authors found best on ImageNet: most of CLIP's gain from
# prompt ensembling at a fraction of the 80 templates' encoding cost. "segmentation" describes a region
# in a scene rather than an object-centred photo, as dense open-vocabulary works prompt.
TEMPLATES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "single": ("a photo of a {}.",),
    "ensemble": (
        "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
        "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
    ),
    "segmentation": (
        "a photo of a {}.", "a photo of the {}.",
        "there is a {} in the scene.", "there is the {} in the scene.",
        "this is a {} in the scene.", "this is the {} in the scene.", "this is one {} in the scene.",
        "a photo of a small {}.", "a photo of a large {}.", "a cropped photo of the {}.",
    ),
    # OpenAI's 80 ImageNet templates, in their order: what the training-free papers (SCLIP, ClearCLIP, NACLIP)
    # average per class name (``prompts/imagenet_template.py`` of each of their repositories); the benchmark
    # protocol (``deop.benchmarks``) uses them. 80 prompts a name: slow to encode on a CPU.
    "imagenet80": (
        "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
        "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
        "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
        "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
        "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
        "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
        "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
        "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
        "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
        "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
        "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
        "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
        "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
        "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
        "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
        "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
        "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
        "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
        "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
        "a photo of a small {}.", "a tattoo of the {}.",
    ),
})

DEFAULT_TEMPLATES = "segmentation"
