"""The released DeOP checkpoint's loader on synthetic files in detectron2's form: strict structure, refusal of
a pickle that would run code, the download's temporary file, and the one-time safetensors conversion.

A full synthetic checkpoint has the released file's 1020 tensors and shapes (218 M numbers); each is one
random number broadcast to its shape (a stride-0 view: torch.save stores one number), so writing and
reading it takes milliseconds. The conversion test, which must materialise every tensor, checks a few
parts' worth of real tensors instead (the expected key list narrowed for it)."""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from deop.errors import WeightsError
from deop.proposers import get_proposer
from deop.trained import checkpoint, keymap
from deop.weights import sha256_of

MARKER_ENV = "DEOP_TEST_PICKLE_MARKER"


def synthetic_state(keys: dict[str, tuple[int, ...]] | None = None, seed: int = 0) -> OrderedDict:
    """A state dict as a detectron2 model's ``state_dict()`` gives it: an OrderedDict with ``_metadata``."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict((k, torch.randn(1, generator=g).expand(shape) if shape else torch.randn((), generator=g))
                        for k, shape in (keys or keymap.expected_keys()).items())
    state._metadata = OrderedDict({"": {"version": 1}, "sem_seg_head": {"version": 2}})
    return state


def write(path: Path, state, **extra) -> Path:
    training = {"optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 1e-4, "params": [0, 1]}]},
                "scheduler": {"last_epoch": 59999, "base_lrs": [1e-4], "_step_count": 60000, "power": 0.9},
                "iteration": 59999}
    torch.save({"model": state, **training, **extra}, path)
    return path


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("released") / "model_final.pth", synthetic_state())


def test_a_checkpoint_in_the_released_form_loads_strictly(released, tmp_path):
    state = checkpoint.read_checkpoint(released)
    expected = keymap.expected_keys()
    assert list(state) == list(expected)
    assert all(tuple(state[k].shape) == shape for k, shape in expected.items())
    assert float(state["query_embedding.weight"][3, 7]) == float(synthetic_state()["query_embedding.weight"][0, 0])
    legacy = tmp_path / "legacy.pth"  # torch's pre-1.6 format cannot be memory-mapped: read the plain way
    torch.save({"model": synthetic_state()}, legacy, _use_new_zipfile_serialization=False)
    assert list(checkpoint.read_checkpoint(legacy)) == list(expected)


@pytest.mark.parametrize("change, named", [
    ("missing", ["missing: decoder.outlayer.norm1.weight"]),
    ("renamed", ["renamed: clip_adapter.clip_model.visual.transformer.resblocks.3.learned_position (found as "
                 "clip_adapter.clip_model.visual.transformer.resblocks.3.learned_positions.learned_position?)"]),
    ("shape", ["wrong shape: query_embedding.weight is [100, 256], expected [100, 512]"]),
    ("extra", ["unexpected: sem_seg_head.predictor.class_embed.layers.2.weight"]),
    ("two", ["missing: backbone.res4.22.conv3.norm.running_var, criterion.empty_weight"]),
])
def test_each_difference_from_the_released_structure_is_named(tmp_path, change, named):
    state = synthetic_state()
    if change in ("missing", "two"):
        del state["decoder.outlayer.norm1.weight" if change == "missing" else "criterion.empty_weight"]
        if change == "two":
            del state["backbone.res4.22.conv3.norm.running_var"]
    elif change == "renamed":
        key = "clip_adapter.clip_model.visual.transformer.resblocks.3.learned_position"
        state[key.replace("learned_position", "learned_positions.learned_position")] = state.pop(key)
    elif change == "shape":
        state["query_embedding.weight"] = torch.zeros(100, 256)
    else:
        state["sem_seg_head.predictor.class_embed.layers.2.weight"] = torch.zeros(512, 512)
    path = write(tmp_path / "model_final.pth", state)
    with pytest.raises(WeightsError) as err:
        checkpoint.read_checkpoint(path)
    message = str(err.value)
    assert str(path) in message
    for part in named:
        assert part in message
    assert message.count(":") < 12  # one line, not a traceback


def test_anything_beside_the_model_but_training_state_is_refused(tmp_path):
    path = write(tmp_path / "model_final.pth", synthetic_state(), extra_weights={"a": torch.zeros(1)})
    with pytest.raises(WeightsError, match="extra_weights beside 'model'"):
        checkpoint.read_checkpoint(path)
    torch.save(synthetic_state(), tmp_path / "bare.pth")
    with pytest.raises(WeightsError, match="not a detectron2 checkpoint"):
        checkpoint.read_checkpoint(tmp_path / "bare.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="corrupt or not a PyTorch checkpoint"):
        checkpoint.read_checkpoint(tmp_path / "junk.pth")


def leave_marker(path: str) -> str:
    """What the malicious pickle calls on loading: it leaves a file behind, so a test can see it ran."""
    Path(path).write_text("ran")
    return "ran"


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return leave_marker, (self.marker,)


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "marker"
    path = write(tmp_path / "model_final.pth", synthetic_state(), iteration=Payload(marker))
    with pytest.raises(WeightsError, match="refused") as err:
        checkpoint.read_checkpoint(path)
    assert str(path) in str(err.value) and "leave_marker" in str(err.value)
    assert not marker.exists()
    with pytest.raises(WeightsError, match="refused"):
        checkpoint.load_trained_state(path, tmp_path / "cache", download=False)
    assert not marker.exists() and not (tmp_path / "cache" / checkpoint.CONVERTED).exists()
    # the payload is live: an unrestricted load (never done by the package) runs it
    assert torch.load(path, weights_only=False)["iteration"] == "ran" and marker.read_text() == "ran"


def small_parts() -> dict[str, tuple[int, ...]]:
    """The prompt, anchor-decoder and criterion parts of the key list: 5 M numbers, materialised for real."""
    return {k: s for k, s in keymap.expected_keys().items() if keymap.part_of(k) in ("prompt", "cal", "criterion")}


def real_state(seed: int) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((k, torch.randn(s, generator=g)) for k, s in small_parts().items())


def test_the_conversion_round_trips_and_is_read_the_second_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint, "expected_keys", small_parts)
    source = write(tmp_path / "mine.pth", real_state(1))
    cache = tmp_path / "checkpoints"
    first = checkpoint.load_trained_state(source, cache, download=False)
    converted = cache / checkpoint.CONVERTED
    assert converted.is_file() and not list(cache.glob("*.part-*"))
    reference = real_state(1)
    assert list(first) == list(reference) and all(torch.equal(first[k], reference[k]) for k in reference)
    digest = sha256_of(source)
    err = capsys.readouterr().err
    assert digest in err and "no checksum" in err

    from safetensors import safe_open

    with safe_open(str(converted), framework="pt") as f:
        assert f.metadata()["source_sha256"] == digest

    def no_pickle(*args, **kwargs):
        raise AssertionError("the pickle was read again")

    monkeypatch.setattr(torch, "load", no_pickle)
    second = checkpoint.load_trained_state(source, cache, download=False)
    assert all(torch.equal(second[k], reference[k]) for k in reference)
    prompt = checkpoint.load_trained_state(source, cache, download=False, parts=("prompt",))
    assert sorted(prompt) == sorted(k for k in reference if k.startswith("clip_adapter."))
    assert capsys.readouterr().err == ""  # no second hash, no second conversion
    monkeypatch.undo()
    monkeypatch.setattr(checkpoint, "expected_keys", small_parts)

    write(source, real_state(2))  # the user replaced the file: converted again
    os.utime(source, ns=(1, 1))
    third = checkpoint.load_trained_state(source, cache, download=False)
    assert torch.equal(third["query_embedding.weight"], real_state(2)["query_embedding.weight"])


def test_a_damaged_or_foreign_conversion_is_refused(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setattr(checkpoint, "expected_keys", small_parts)
    cache = tmp_path / "checkpoints"
    cache.mkdir()
    (cache / checkpoint.CONVERTED).write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="damaged.*delete it"):
        checkpoint.load_trained_state(None, cache, download=False)
    state = dict(real_state(4))
    state["query_embedding.weight"] = torch.zeros(100, 256)
    save_file(state, str(cache / checkpoint.CONVERTED))
    with pytest.raises(WeightsError, match=re.escape("query_embedding.weight is [100, 256], expected [100, 512]")):
        checkpoint.load_trained_state(None, cache, download=False, parts=("prompt",))


def test_the_download_lands_whole_or_not_at_all(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "expected_keys", small_parts)
    calls = []

    def fetch(id, output, quiet):
        calls.append((id, Path(output).parent, quiet))
        write(Path(output), real_state(3))
        return output

    state = checkpoint.load_trained_state(None, tmp_path, download=True, progress=False, downloader=fetch)
    assert calls == [(checkpoint.DRIVE_ID, tmp_path, True)]
    assert (tmp_path / checkpoint.FILENAME).is_file() and (tmp_path / checkpoint.CONVERTED).is_file()
    assert torch.equal(state["query_embedding.weight"], real_state(3)["query_embedding.weight"])
    assert not list(tmp_path.glob("*.part-*"))


def test_offline_the_error_names_the_url_and_the_exact_path(tmp_path):
    def offline(id, output, quiet):
        Path(output).write_bytes(b"half a file")
        raise ConnectionError("Failed to resolve 'drive.google.com'")

    dest = tmp_path / checkpoint.FILENAME
    with pytest.raises(WeightsError) as err:
        checkpoint.load_trained_state(None, tmp_path, downloader=offline)
    message = str(err.value)
    assert checkpoint.CHECKPOINT_URL in message and f"save it as {dest}" in message and "--deop-checkpoint" in message
    assert "ConnectionError" in message and not dest.exists() and not list(tmp_path.glob("*.part-*"))
    with pytest.raises(WeightsError, match=re.escape(f"no file at {dest}, and downloads are off")):
        checkpoint.load_trained_state(None, tmp_path, download=False)
    with pytest.raises(WeightsError, match=re.escape(f"no DeOP checkpoint at {tmp_path / 'elsewhere.pth'}")):
        checkpoint.load_trained_state(tmp_path / "elsewhere.pth", tmp_path, download=False)


def test_the_family_loads_the_generator_part_of_a_released_checkpoint(released, tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError("read-only folder")  # keeps the 875 MB conversion out of the test; the pickle is used

    monkeypatch.setattr(checkpoint, "convert", read_only)
    spec = get_proposer("deop-trained")
    model = spec.family.build(spec, False, tmp_path, False, checkpoint=released)
    state = synthetic_state()
    for theirs, ours in (("sem_seg_head.predictor.query_embed.weight", model.predictor.query_embed.weight),
                         ("backbone.res5.2.conv2.weight", model.backbone.res5[2].conv2.weight),
                         ("sem_seg_head.pixel_decoder.mask_features.bias", model.pixel_decoder.mask_features.bias),
                         ("sem_seg_head.predictor.transformer.decoder.layers.5.norm3.weight",
                          model.predictor.decoder.layers[5].norm3.weight)):
        assert torch.equal(ours, state[theirs].expand_as(ours))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
