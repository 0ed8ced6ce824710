"""The trained model through the package's seams (issue 23, part B): ``Segmenter(SegmenterConfig(model=
"deop-trained", random_weights=True))`` with method both, its cached stage keyed on the proposals, the
refusals (dense, clicks, severance variants) and the CLI.

The generator runs at the official short side of 512 px, which costs tens of seconds on this CPU; the tests
run the same network at a 64 px short side (``query_masks(short_side=64)`` on the shared model cache's
instance) and keep 4 segments, so the crop baseline stays short.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deop.config import SegmenterConfig
from deop.errors import OptionError
from deop.methods import methods_of
from deop.models import MODELS
from deop.pipeline import Segmenter
from deop.trained.model import class_probabilities, query_logits

SHORT_SIDE = 64
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small_generator():
    import functools

    model = MODELS.proposer("deop-trained", CPU, True).model
    model.query_masks = functools.partial(type(model).query_masks, model, short_side=SHORT_SIDE)
    yield model
    del model.query_masks


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    y, x = np.mgrid[0:48, 0:80]
    img = np.stack([(x * 3) % 256, (y * 5) % 256, ((x + y) * 2) % 256], axis=-1).astype(np.uint8)
    img[10:30, 20:50] = (200, 30, 40)
    return img


@pytest.fixture(scope="module")
def segmenter(small_generator) -> Segmenter:
    return Segmenter(SegmenterConfig(model="deop-trained", random_weights=True, device="cpu"))


@pytest.fixture(scope="module")
def result(segmenter, image):
    return segmenter.segment(image, "cat\ndog\ngrass: lawn\nsky", method="both", max_masks=4)


def test_both_runs_the_trained_model_and_the_crop_baseline_on_the_same_proposals(segmenter, result, image):
    assert list(result.methods) == ["deop-trained", "crop"] and result.comparison == ("deop-trained", "crop")
    trained, crop = result.methods["deop-trained"], result.methods["crop"]
    assert 1 <= len(trained.segments) <= 4 and len(trained.segments) == len(crop.segments)
    assert trained.label_map.shape == crop.label_map.shape == image.shape[:2]
    assert (trained.label_map >= 0).all()  # the official combination labels every pixel
    assert result.settings["model"] == "deop-trained" and result.settings["sam_kind"] == "deop-trained"
    # heatmaps: class x the patches covering the image, not the padding (48 x 80 at a 64 px short side is
    # 64 x 107, padded to 64 x 128: a 4 x 8 grid of which 4 x 7 cover the image)
    assert result.similarity is not None and result.similarity.shape == (4, 4, 7)
    assert crop.timings["image_encoding"] > 0 and trained.timings["image_encoding"] > 0
    json.dumps(result.to_dict())  # the result's JSON


def test_a_segments_probabilities_are_its_querys(segmenter, result, image):
    """Segment i's scores come from CAL's output for query ``source[i]``, over [classes; no-object] with the
    no-object column dropped."""
    timed, hit = segmenter.proposals(image, segmenter.config.options.with_overrides(max_masks=4))
    assert hit
    proposals = timed.value
    key = ("deop-trained", *segmenter.proposals_key(segmenter_key(image),
                                                    segmenter.config.options.with_overrides(max_masks=4)),
           segmenter.trained.key)
    encoded, hit = segmenter.stages["trained"].get(key, lambda: pytest.fail("the trained stage was not cached"))
    text = segmenter.trained.names(["cat", "dog", "grass", "lawn", "sky"])
    classes = torch.nn.functional.normalize(torch.stack([text[0], text[1], (text[2] + text[3]) / 2, text[4]]), dim=-1)
    probs = class_probabilities(query_logits(encoded.value.anchors, classes, encoded.value.none))
    for segment, source in zip(result.methods["deop-trained"].segments, proposals.source):
        best = int(probs[source].argmax())
        assert segment.label == best
        assert abs(segment.score - float(probs[source, best])) < 1e-4


def segmenter_key(image: np.ndarray) -> str:
    from deop.images import image_key

    return image_key(image)


def test_new_vocabulary_reuses_the_trained_stage_a_new_proposal_setting_does_not(segmenter, result, image):
    again = segmenter.segment(image, "cat, tree", method="one-pass", max_masks=4)
    assert {"proposals", "image_encoding"} <= set(again.methods["deop-trained"].cached)
    other = segmenter.segment(image, "cat, tree", method="one-pass", max_masks=3)
    assert "image_encoding" not in other.methods["deop-trained"].cached  # keyed on the proposals' key


def test_refusals_name_the_model(segmenter, image):
    from deop.explore import add_segment, compare_variants

    with pytest.raises(OptionError, match="not available with the deop-trained model"):
        methods_of("dense", "deop-trained")
    with pytest.raises(OptionError, match="no prompt encoder"):
        add_segment(segmenter, image, "cat", [(10.0, 10.0, True)])
    with pytest.raises(OptionError, match="severance"):
        next(compare_variants(segmenter, image, "cat"))


def test_cli_segments_with_the_trained_model(small_generator, image, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from deop.commands import main

    monkeypatch.delenv("DEOP_MODEL", raising=False)
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    code = main(["segment", str(path), "--classes", "cat, dog", "--model", "deop-trained", "--random-weights",
                 "--device", "cpu", "--max-masks", "2", "--method", "one-pass", "--out", str(tmp_path / "out")])
    assert code == 0
    data = json.loads((tmp_path / "out" / "scene.json").read_text())
    assert data["settings"]["model"] == "deop-trained" and list(data["methods"]) == ["deop-trained"]
    monkeypatch.setenv("DEOP_MODEL", "deop-trained")
    capsys.readouterr()
    assert main(["segment", str(path), "--classes", "cat", "--random-weights", "--device", "cpu", "--method",
                 "dense", "--out", str(tmp_path / "out2")]) == 1  # the environment picks the model; dense refused
    assert "method 'dense' is not available with the deop-trained model" in capsys.readouterr().err


def test_bench_writes_the_trained_record(small_generator, tmp_path, capsys):
    """The bench's trained record, at a 64 px generator input and 3 crops (each a 224 px CLIP pass)."""
    from deop.commands import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "deop-trained", "--random-weights", "--device", "cpu", "--repeats", "1",
                 "--n-masks", "3", "--json", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    assert record["kind"] == "trained" and record["n_crops"] == 3 and record["n_queries"] == 100
    s = record["seconds"]
    assert abs(record["one_pass_seconds"] - (s["generator"] + s["clip"] + s["cal"] + s["combination"])) < 1e-3
    assert abs(record["crop_seconds"] - (s["generator"] + s["crops"] + s["scoring"])) < 1e-3
    assert record["paper"]["ratio"] == 3.9 and "3.9x" in capsys.readouterr().out


def test_choosing_the_trained_generator_brings_the_trained_model(segmenter):
    """The app's proposal-model menu switches Segmenters with ``with_proposal_model``: the trained generator
    runs the trained model; a SAM runs the training-free model, whatever the base was."""
    base = Segmenter(SegmenterConfig(random_weights=True, device="cpu"))
    trained = base.with_proposal_model("deop-trained")
    assert trained.config.trained and trained.proposer_spec.name == "deop-trained"
    back = segmenter.with_proposal_model("mobile_sam")
    assert not back.config.trained and back.config.proposal_model == "mobile_sam"


def test_eval_on_a_benchmark_runs_the_trained_model_and_its_crop_baseline(small_generator, tmp_path):
    """`eval --benchmark ... --model deop-trained`: its rows are the trained one pass and the crop baseline on
    its proposals, scored like any other method; its own severance takes no --variants."""
    from benchmark_support import make_benchmarks
    from deop.commands import main
    from deop.evaluation import plan_runs

    assert [r.name for r in plan_runs("both", None, "deop", model="deop-trained")] == ["deop-trained", "crop"]
    with pytest.raises(OptionError, match="dense"):
        plan_runs("dense", None, "deop", model="deop-trained")
    with pytest.raises(OptionError, match="--variants"):
        plan_runs("one-pass", ["deop", "sclip"], "deop", model="deop-trained")
    root = make_benchmarks(tmp_path / "data")
    out = tmp_path / "r.json"
    assert main(["eval", "--benchmark", "cityscapes", "--data-root", str(root), "--model", "deop-trained",
                 "--method", "both", "--limit", "1", "--max-masks", "4", "--random-weights", "--device", "cpu",
                 "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["runs"] == ["deop-trained", "crop"]
    bench = rep["benchmarks"]["cityscapes"]
    assert bench["images"] == 1 and bench["failed"] == [] and set(bench["miou"]) == {"deop-trained", "crop"}


def test_the_app_runs_the_trained_model_from_its_menu_and_when_configured(small_generator, tmp_path):
    """The app's server: the trained generator is in the proposal-model menu (from the registry) and choosing
    it runs the trained model beside its crop baseline; started with model=deop-trained, the menu's first
    entry is the trained generator, not the unused sam_kind."""
    from dataclasses import replace

    from PIL import Image

    from conftest import SMALL_CONFIG
    from deop.web.server import SEGMENT_EVENT_OUTPUTS, Server

    photo = tmp_path / "photo.png"
    y, x = np.mgrid[0:48, 0:80]
    Image.fromarray(np.stack([(x * 3) % 256, (y * 5) % 256, (x + y) % 256], -1).astype(np.uint8)).save(photo)
    config = replace(SMALL_CONFIG, options=SMALL_CONFIG.options.with_overrides(max_masks=4))
    server = Server(config, calibrate=False, folder=tmp_path / "app")
    assert server.loader.ready.wait(120) and server.loader.error is None
    assert "deop-trained" in [kind for _, kind in server.models]
    inputs = {**server.defaults, "image": str(photo), "vocabulary": "sky, grass", "state": None,
              "proposal_model": "deop-trained"}
    *_, last = [dict(zip(SEGMENT_EVENT_OUTPUTS, out)) for out in server.segment(inputs)]
    result = server.sessions.get(last["state"]).result
    assert list(result.methods) == ["deop-trained", "crop"] and result.settings["model"] == "deop-trained"
    trained = Server(replace(config, model="deop-trained"), calibrate=False, folder=tmp_path / "app2")
    assert trained.models[0][1] == "deop-trained" and trained.defaults["proposal_model"] == "deop-trained"
