"""SAM 2.1 as a proposal backend, on randomly initialised Hiera-T: equal to sam2's own generator, usable at
smaller inputs, through the Segmenter and the CLI, with its weights fetched and verified like SAM's."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL_CONFIG, SMALL_PROPOSALS, scene
from deop import Segmenter
from deop.commands import main
from deop.errors import MissingPackageError, OptionError, WeightsError
from deop.models import MODELS
from deop.proposers import PROPOSERS, get_proposer
from deop.proposers.sam2 import SAM2
from deop.timing import Deadline, SegmentTimeout
from deop.weights import HubCheckpoint, ensure_hub_checkpoint

SAM2_MODELS = {name: spec for name, spec in PROPOSERS.items() if spec.family is SAM2}

if not SAM2.available():
    if os.environ.get("DEOP_REQUIRE_SAM2"):
        raise RuntimeError("DEOP_REQUIRE_SAM2 is set but the sam2 package is missing (make install adds it)")
    pytest.skip("the optional sam2 package is not installed (see requirements-sam2.txt)", allow_module_level=True)

KIND = "sam2.1_hiera_t"
CPU = torch.device("cpu")
# A random SAM 2.1 predicts nearly the same mask from every point; without NMS the 4x4 grid keeps all 48
# (3 per point), so equality is checked on many distinct masks, not one.
PROPOSALS = replace(SMALL_PROPOSALS, box_nms_thresh=1.0)


def build_sam(kind: str, checkpoint_dir=None, download=True, random_weights=False):
    spec = get_proposer(kind)
    return spec.family.build(spec, random_weights, checkpoint_dir, download)


@pytest.fixture(scope="module")
def sam2_full():
    return MODELS.proposer(KIND, CPU, random_weights=True, input_size=1024).model


@pytest.fixture(scope="module")
def sam2_small():
    return MODELS.proposer(KIND, CPU, random_weights=True, input_size=256)


def generate(model, image, config, deadline=None) -> list[dict]:
    with torch.inference_mode():
        return SAM2.generate(model, image, config, deadline).to_records()


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and len(a) > 1
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["segmentation"], y["segmentation"])
        assert x["predicted_iou"] == y["predicted_iou"]


def test_kinds_are_listed_next_to_sam():
    assert len(SAM2_MODELS) == 4 and {"vit_b", "tiny"} <= set(PROPOSERS)
    assert all(spec.weights.url.startswith("https://huggingface.co/facebook/sam2.1-hiera-")
               for spec in SAM2_MODELS.values())


@pytest.mark.slow
def test_generator_equals_stock_sam2(sam2_full):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    image = scene()
    stock = SAM2AutomaticMaskGenerator(sam2_full, **PROPOSALS.generator_kwargs()).generate(image)
    ours = generate(sam2_full, image, PROPOSALS)
    assert len({m["segmentation"].tobytes() for m in stock}) > 10
    _same(ours, stock)


def test_smaller_input_shares_weights_and_equals_a_model_built_at_that_size(sam2_full, sam2_small):
    from sam2.build_sam import build_sam2

    small = sam2_small.model
    assert sam2_small.input_size == 256 and small.image_size == 256 and sam2_full.image_size == 1024
    assert small.image_encoder is sam2_full.image_encoder
    assert small.sam_prompt_encoder.image_embedding_size == (16, 16)
    native = build_sam2(SAM2_MODELS[KIND].arch["config"], None, device="cpu",
                        hydra_overrides_extra=["++model.image_size=256"])
    native.load_state_dict(sam2_full.state_dict())
    image = scene()
    _same(generate(native.eval(), image, PROPOSALS), generate(small, image, PROPOSALS))


def test_proposals_are_disjoint_and_cover_the_union(sam2_small):
    image = scene()
    masks = generate(sam2_small.model, image, PROPOSALS)
    props = sam2_small.propose(image, PROPOSALS)
    union = np.any([m["segmentation"] for m in masks], axis=0)
    np.testing.assert_array_equal(props.segment_map >= 0, union)
    assert props.raw_count == len(masks) and 1 < len(props) <= len(masks)
    assert set(np.unique(props.segment_map[props.segment_map >= 0])) == set(range(len(props)))


def test_input_size_must_suit_hiera(sam2_full):
    with pytest.raises(OptionError, match="multiple of 32"):
        MODELS.proposer(KIND, CPU, random_weights=True, input_size=240)


def test_deadline_stops_the_generator(sam2_small):
    deadline = Deadline(1e-9)
    with pytest.raises(SegmentTimeout, match="mask proposals"):
        sam2_small.propose(scene(), PROPOSALS, deadline)


@pytest.mark.slow
def test_segmenter_runs_both_methods_on_sam2_proposals(sam2_small):
    config = replace(SMALL_CONFIG, sam_kind=KIND,
                     options=SMALL_CONFIG.options.with_overrides(proposals=PROPOSALS, sam_input_size=256))
    result = Segmenter(config).segment(scene(), "sky, grass, ball", "both")
    one, crop = result.methods["one-pass"], result.methods["crop"]
    assert len(one.segments) == len(crop.segments) > 1
    assert one.label_map.shape == crop.label_map.shape == (120, 160)
    assert one.timings["proposals"] > 0 and one.timings["image_encoding"] > 0


def test_cli_takes_a_sam2_model(tmp_path):
    from PIL import Image

    Image.fromarray(scene()).save(tmp_path / "a.png")
    out = tmp_path / "out"
    code = main(["segment", str(tmp_path / "a.png"), "--classes", "sky, grass", "--out", str(out),
                 "--random-weights", "--device", "cpu", "--sam", KIND, "--sam-input-size", "256",
                 "--points-per-side", "4", "--max-side", "256", "--clip-size", "224"])
    assert code == 0
    data = json.loads((out / "a.json").read_text())
    assert data["settings"]["sam_kind"] == KIND and data["methods"]["one-pass"]["segments"]


def test_checkpoint_is_loaded_strictly_from_the_checkpoint_dir(tmp_path, sam2_full):
    state = {k: v.clone() for k, v in sam2_full.state_dict().items()}
    state["sam_mask_decoder.iou_prediction_head.layers.0.bias"] += 1.0
    torch.save({"model": state}, tmp_path / SAM2_MODELS[KIND].weights.filename)
    loaded = build_sam(KIND, checkpoint_dir=tmp_path, download=False)
    assert torch.equal(loaded.sam_mask_decoder.iou_prediction_head.layers[0].bias,
                       state["sam_mask_decoder.iou_prediction_head.layers.0.bias"])
    torch.save({"model": {"not": torch.zeros(1)}}, tmp_path / SAM2_MODELS[KIND].weights.filename)
    with pytest.raises(WeightsError, match="does not hold SAM 2.1"):
        build_sam(KIND, checkpoint_dir=tmp_path, download=False)


# -- fetching from the Hub: hf_hub_download replaced by a fake that writes its cache layout ------------
CKPT = HubCheckpoint("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt")
PAYLOAD = b"weights" * 1000


def _fake_hub(tmp_path: Path, payload: bytes, calls: list[dict], declared: bytes = PAYLOAD):
    """Stores `payload` under the blob name the Hub would give `declared` (its SHA-256), as the cache does."""
    def download(**kwargs):
        calls.append(kwargs)
        blob = tmp_path / "blobs" / hashlib.sha256(declared).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(payload)
        link = tmp_path / "snapshots" / kwargs["filename"]
        link.parent.mkdir(exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(blob)
        return str(link)
    return download


def test_hub_download_is_verified_against_the_declared_sha256(tmp_path):
    calls: list[dict] = []
    path = ensure_hub_checkpoint(CKPT, tmp_path / "empty", hub_download=_fake_hub(tmp_path, PAYLOAD, calls))
    assert path.read_bytes() == PAYLOAD
    assert calls == [{"repo_id": CKPT.repo_id, "filename": CKPT.filename, "local_files_only": False,
                      "force_download": False}]


def test_corrupt_hub_copy_is_fetched_again_then_reported(tmp_path):
    calls: list[dict] = []
    with pytest.warns(UserWarning, match="corrupt"), pytest.raises(WeightsError, match="corrupt") as info:
        ensure_hub_checkpoint(CKPT, tmp_path / "empty", hub_download=_fake_hub(tmp_path, b"truncated", calls))
    assert [c["force_download"] for c in calls] == [False, True]
    assert CKPT.url in str(info.value) and "--random-weights" in str(info.value)


def test_offline_or_downloads_off_give_the_clear_error(tmp_path):
    def offline(**kwargs):
        raise OSError("Network is unreachable")

    with pytest.raises(WeightsError, match="could not be downloaded") as info:
        ensure_hub_checkpoint(CKPT, tmp_path, hub_download=offline)
    assert CKPT.url in str(info.value) and str(tmp_path / CKPT.filename) in str(info.value)
    calls: list[dict] = []

    def not_cached(**kwargs):
        calls.append(kwargs)
        raise FileNotFoundError("not in cache")

    with pytest.raises(WeightsError, match="downloads are off"):
        ensure_hub_checkpoint(CKPT, tmp_path, download_missing=False, hub_download=not_cached)
    assert calls[0]["local_files_only"] is True


def test_a_file_placed_by_hand_wins(tmp_path):
    (tmp_path / CKPT.filename).write_bytes(b"by hand")

    def never(**kwargs):
        raise AssertionError("the Hub was asked although a local file exists")

    assert ensure_hub_checkpoint(CKPT, tmp_path, hub_download=never) == tmp_path / CKPT.filename


@pytest.mark.slow
def test_app_switches_to_sam2_proposals_and_back(app_url, tmp_path):
    """The app's "Proposal model" choice: SAM 2.1 on the same image, then the configured SAM again."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import ValidationError
    from PIL import Image

    Image.fromarray(scene(seed=44)).save(tmp_path / "scene.png")
    client = Client(app_url, verbose=False)
    image = handle_file(str(tmp_path / "scene.png"))
    left, _, latency, *_ = client.predict(image, "sky, grass", "one-pass", proposal_model=KIND, api_name="/segment")
    assert left["annotations"] and "One pass (DeOP)" in latency and "reused" not in latency
    # the configured model's proposals are not SAM 2.1's: nothing is served from the other model's cache
    _, _, latency, *_ = client.predict(image, "sky, grass", "one-pass", api_name="/segment")
    assert "reused" not in latency
    with pytest.raises(ValidationError, match="proposal_model must be one of tiny, vit_b.*got 'vit_h'"):
        client.predict(image, "sky", "one-pass", proposal_model="vit_h", api_name="/segment")
    out = client.predict(image, "sky", "one-pass", api_name="/segment")
    assert out[0]["annotations"]


def test_status_line_names_the_sam2_model(sam2_small):
    from deop.ui import ModelLoader

    loader = ModelLoader(Segmenter(replace(SMALL_CONFIG, sam_kind=KIND))).start()
    assert loader.ready.wait(120)
    assert "SAM 2.1 hiera_t" in loader.status() and loader.error is None


def test_without_the_sam2_package_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(type(SAM2), "available", lambda self: False)
    with pytest.raises(MissingPackageError, match="no-build-isolation sam2==1.1.0"):
        build_sam(KIND, random_weights=True)


def test_random_sam2_weights_repeat_across_builds(sam2_full):
    """The seeded random Hiera-T: a second build equals the session's model, weight for weight."""
    again = build_sam(KIND, random_weights=True)
    a, b = sam2_full.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_bench_compares_sam2_with_its_own_stock_generator():
    """``bench --sam sam2.1_hiera_t`` used to build segment_anything's generator for it and crash."""
    from deop.bench.measure import Bench, synthetic_image

    seg = Segmenter(replace(SMALL_CONFIG, sam_kind=KIND))
    bench = Bench(seg, repeats=1, warmup=0)
    records = [r.to_dict() for r in bench.proposals_at_counts(("fast",), (2,), synthetic_image(128), points_per_side=2)]
    assert [(r["method"], r["sam_model"], r["n_masks"]) for r in records] == [("stock", KIND, 2), ("deop", KIND, 2)]
    assert all(r["seconds_median"] > 0 and r["identical"] for r in records)
