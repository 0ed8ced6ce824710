"""MobileSAM as a proposal model, on a randomly initialised TinyViT: the official generator's masks, the
app and CLI choices, and its weights and package errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import SMALL_CONFIG, SMALL_PROPOSALS, scene
from deop.errors import MissingPackageError, OptionError, WeightsError
from deop.models import MODELS
from deop.proposers import PROPOSERS, get_proposer
from deop.proposers.mobile_sam import MOBILE_SAM

CPU = torch.device("cpu")
# NMS off: a random decoder predicts nearly the same mask from every point, and equality should be checked
# on many masks, not the one NMS would keep.
PROPOSALS = replace(SMALL_PROPOSALS, box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def mobile():
    return MODELS.proposer("mobile_sam", CPU, random_weights=True)


def test_it_is_one_registry_entry_of_sams_family_with_the_official_weights():
    spec = PROPOSERS["mobile_sam"]
    assert spec.title == "MobileSAM" and spec.in_app and spec.fixed_input_size == 1024
    assert spec.weights.url == "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"
    assert spec.weights.sha256 == "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"


def test_the_official_architecture_runs_at_1024_whatever_input_size_is_asked(mobile):
    from mobile_sam.modeling import TinyViT

    assert isinstance(mobile.model.image_encoder, TinyViT) and mobile.input_size == 1024
    assert MODELS.proposer("mobile_sam", CPU, random_weights=True, input_size=512).model is mobile.model
    with pytest.raises(OptionError, match="MobileSAM runs at 1024 px only"):
        MOBILE_SAM.at_input_size(mobile.model, 512)


def test_proposals_equal_the_official_generator(mobile):
    from mobile_sam import SamAutomaticMaskGenerator

    image = scene(seed=3)
    stock = SamAutomaticMaskGenerator(mobile.model, output_mode="binary_mask",
                                      **PROPOSALS.generator_kwargs()).generate(image)
    ours = mobile.masks(image, PROPOSALS).to_records()
    assert len(stock) > 1 and len(ours) == len(stock)
    for a, b in zip(ours, stock):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        assert a["predicted_iou"] == b["predicted_iou"] and a["stability_score"] == b["stability_score"]
        assert a["bbox"] == b["bbox"] and a["area"] == b["area"]


def test_segmenter_and_cli_take_it(mobile, tmp_path):
    from PIL import Image

    from deop import Segmenter
    from deop.commands import main

    config = replace(SMALL_CONFIG, sam_kind="mobile_sam")
    result = Segmenter(config).segment(scene(seed=4), "sky, grass", "one-pass", box_nms_thresh=1.0)
    assert result.methods["one-pass"].segments and result.settings["sam_kind"] == "mobile_sam"
    Image.fromarray(scene(seed=5)).save(tmp_path / "a.png")
    code = main(["segment", str(tmp_path / "a.png"), "--classes", "sky", "--sam", "mobile_sam", "--random-weights",
                 "--device", "cpu", "--points-per-side", "2", "--max-side", "128", "--clip-size", "224",
                 "--method", "one-pass", "--out", str(tmp_path / "out")])
    assert code == 0 and json.loads((tmp_path / "out" / "a.json").read_text())["settings"]["sam_kind"] == "mobile_sam"


def test_missing_weights_name_the_file_the_url_and_the_path(tmp_path):
    spec = get_proposer("mobile_sam")
    with pytest.raises(WeightsError) as info:
        MOBILE_SAM.build(spec, False, tmp_path, download=False)
    message = str(info.value)
    assert "MobileSAM checkpoint is missing" in message and spec.weights.url in message
    assert str(tmp_path / "mobile_sam.pt") in message and "--random-weights" in message


def test_weights_of_another_model_are_refused(tmp_path, monkeypatch, mobile):
    spec = get_proposer("mobile_sam")
    torch.save({"not": torch.zeros(1)}, tmp_path / "mobile_sam.pt")
    monkeypatch.setattr("deop.weights._cached_sha256", lambda path: spec.weights.sha256)  # passes the checksum
    with pytest.raises(WeightsError, match="does not hold MobileSAM weights"):
        MOBILE_SAM.build(spec, False, tmp_path, download=False)


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(type(MOBILE_SAM), "available", lambda self: False)
    with pytest.raises(MissingPackageError, match="pip install mobilesam-mirror timm"):
        MOBILE_SAM.build(get_proposer("mobile_sam"), True, None, True)
