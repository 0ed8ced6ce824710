"""Weight files against a local HTTP server: never the network, always a real socket and real files."""

from __future__ import annotations

import hashlib
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from deop import weights
from deop.errors import WeightsError
from deop.proposers import PROPOSERS
from deop.weights import (
    Checkpoint,
    HubCheckpoint,
    clip_weights_error,
    default_checkpoint_dir,
    download,
    ensure_checkpoint,
    load_state_dict,
    sha256_of,
)

SAM_CHECKPOINTS = {name: spec.weights for name, spec in PROPOSERS.items() if spec.family.name == "sam" and spec.weights}


def ensure_sam_checkpoint(kind, checkpoint_dir=None, download_missing=True, progress=True, checkpoints=None):
    return ensure_checkpoint((checkpoints or SAM_CHECKPOINTS)[kind], f"SAM {kind}", checkpoint_dir, download_missing,
                             progress)

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one read chunk
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/file.bin":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/truncated.bin":  # promises the whole file, sends a tenth, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 10])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"


def leftovers(folder: Path) -> list[Path]:
    return list(folder.glob("*.part-*"))


def assert_manual_instructions(message: str, url: str, dest: Path) -> None:
    assert url in message
    assert f"put it at {dest}" in message
    assert "--random-weights" in message


def test_download_success_verifies_and_leaves_no_temp(server, tmp_path):
    dest = tmp_path / "sub" / "model.pth"
    assert download(f"{server}/file.bin", dest, PAYLOAD_SHA, progress=True) == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == []


def test_download_without_hash_and_file_url(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "copy.bin"
    download(src.as_uri(), dest, None, progress=False)
    assert sha256_of(dest) == PAYLOAD_SHA


def test_wrong_hash_removes_everything(server, tmp_path):
    dest = tmp_path / "model.pth"
    with pytest.raises(WeightsError) as err:
        download(f"{server}/file.bin", dest, "0" * 64, progress=False)
    assert "0" * 64 in str(err.value) and PAYLOAD_SHA in str(err.value)
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_wrong_hash_keeps_a_previous_good_file(server, tmp_path):
    dest = tmp_path / "model.pth"
    dest.write_bytes(b"previous")
    with pytest.raises(WeightsError):
        download(f"{server}/file.bin", dest, "0" * 64, progress=False)
    assert dest.read_bytes() == b"previous"  # os.replace never happened


@pytest.mark.parametrize("path", ["/truncated.bin", "/missing.bin"])
def test_server_failures_give_manual_instructions(server, tmp_path, path):
    dest = tmp_path / "model.pth"
    url = server + path
    with pytest.raises(WeightsError) as err:
        download(url, dest, PAYLOAD_SHA, progress=False)
    assert_manual_instructions(str(err.value), url, dest)
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_closed_port(tmp_path):
    dest = tmp_path / "model.pth"
    url = closed_port_url()
    with pytest.raises(WeightsError) as err:
        download(url, dest, PAYLOAD_SHA, progress=False, timeout=5)
    assert_manual_instructions(str(err.value), url, dest)
    assert isinstance(err.value.__cause__, OSError)
    assert leftovers(tmp_path) == []


def test_no_network(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    dest = tmp_path / "model.pth"
    url = "https://example.invalid/sam.pth"
    with pytest.raises(WeightsError) as err:
        download(url, dest, PAYLOAD_SHA, progress=False)
    assert "Network is unreachable" in str(err.value)
    assert_manual_instructions(str(err.value), url, dest)
    assert leftovers(tmp_path) == []


def test_only_http_and_file_urls(tmp_path):
    with pytest.raises(WeightsError, match="only http, https, file"):
        download("ftp://example.invalid/sam.pth", tmp_path / "x.pth", None, progress=False)


def test_sam_table_matches_meta_release():
    assert set(SAM_CHECKPOINTS) == {"vit_b", "vit_l", "vit_h"}
    for kind, ckpt in SAM_CHECKPOINTS.items():
        assert ckpt.url == "https://dl.fbaipublicfiles.com/segment_anything/" + ckpt.filename
        assert ckpt.filename.startswith(f"sam_{kind}_")
        assert len(ckpt.sha256) == 64 and int(ckpt.sha256, 16) >= 0


def test_default_checkpoint_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DEOP_CHECKPOINT_DIR", str(tmp_path))
    assert default_checkpoint_dir() == tmp_path
    monkeypatch.delenv("DEOP_CHECKPOINT_DIR")
    assert default_checkpoint_dir() == Path(weights.__file__).resolve().parent.parent / "checkpoints"


def table(server: str) -> dict[str, Checkpoint]:
    return {"vit_b": Checkpoint(f"{server}/file.bin", "sam_test.pth", PAYLOAD_SHA)}


def test_ensure_redownloads_a_corrupt_file(server, tmp_path):
    path = tmp_path / "sam_test.pth"
    path.write_bytes(PAYLOAD[:1000])  # a truncated earlier download
    with pytest.warns(UserWarning, match="corrupt"):
        got = ensure_sam_checkpoint("vit_b", tmp_path, progress=False, checkpoints=table(server))
    assert got == path
    assert sha256_of(path) == PAYLOAD_SHA


def test_ensure_caches_the_verification(server, tmp_path, monkeypatch):
    first = ensure_sam_checkpoint("vit_b", tmp_path, progress=False, checkpoints=table(server))

    def no_rehash(path):
        raise AssertionError("an unchanged file was hashed again")

    monkeypatch.setattr(weights, "sha256_of", no_rehash)
    again = ensure_sam_checkpoint("vit_b", tmp_path, download_missing=False, checkpoints=table(server))
    assert again == first
    monkeypatch.undo()
    first.write_bytes(b"changed")  # new size and mtime: must be hashed again and found corrupt
    with pytest.raises(WeightsError, match="corrupt"):
        ensure_sam_checkpoint("vit_b", tmp_path, download_missing=False, checkpoints=table(server))


def test_ensure_missing_without_download(tmp_path):
    with pytest.raises(WeightsError) as err:
        ensure_sam_checkpoint("vit_h", tmp_path, download_missing=False)
    expected = tmp_path / "sam_vit_h_4b8939.pth"
    assert_manual_instructions(str(err.value), SAM_CHECKPOINTS["vit_h"].url, expected)
    assert list(tmp_path.iterdir()) == []


def test_ensure_offline_is_a_weights_error(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(WeightsError, match="--random-weights"):
        ensure_sam_checkpoint("vit_b", tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


class NotWeights:
    def __init__(self) -> None:
        self.payload = 42


def test_load_state_dict_roundtrip(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.int64)}, path)
    state = load_state_dict(path)
    assert torch.equal(state["a"], torch.arange(6.0).reshape(2, 3))
    assert state["b"].dtype == torch.int64 and state["a"].device.type == "cpu"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_load_state_dict_corrupt(tmp_path, damage):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10,
                      "empty": b""}[damage])
    with pytest.raises(WeightsError, match="corrupt") as err:
        load_state_dict(path)
    assert str(path) in str(err.value)


def test_load_state_dict_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"obj": NotWeights()}, path)
    with pytest.raises(WeightsError, match="corrupt or not a plain weights file") as err:
        load_state_dict(path)
    assert "NotWeights" in str(err.value)  # refused by weights_only, not by some unrelated failure


def test_load_state_dict_requires_a_dict(tmp_path):
    path = tmp_path / "t.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(WeightsError, match="not a state dict"):
        load_state_dict(path)


def test_clip_weights_error_message():
    err = clip_weights_error("ViT-B-16", "openai", OSError("offline"))
    msg = str(err)
    assert isinstance(err, WeightsError)
    for part in ("ViT-B-16", "'openai'", "offline", "HF_HOME", "~/.cache/huggingface", "HF_HUB_OFFLINE=1",
                 "--random-weights"):
        assert part in msg


def test_the_checkpoint_folders_readme_is_generated_from_the_registry():
    """checkpoints/ exists in a fresh clone with a README listing, for every model with weights, its file,
    size, SHA-256 and how to fetch it by hand; a model added to the registry without them fails here."""
    readme = Path(__file__).resolve().parent.parent / "checkpoints" / "README.md"
    assert readme.read_text() == weights.checkpoints_readme(PROPOSERS.values()), \
        "checkpoints/README.md is stale: python -m deop.weights > checkpoints/README.md"
    for spec in PROPOSERS.values():
        if spec.weights is not None:
            size, sha256 = weights.SIZES[spec.weights.filename], spec.weights.sha256
            assert f"`{spec.weights.filename}`, {size:,} bytes" in readme.read_text()
            assert f"SHA-256: `{sha256}`" in readme.read_text() and len(sha256) == 64, spec.name
    assert "`deop_model_final.pth`" in readme.read_text() and "--deop-checkpoint" in readme.read_text(), \
        "the trained model's checkpoint (no published checksum) has its own section"
    from dataclasses import replace

    new = replace(PROPOSERS["vit_b"], weights=Checkpoint("https://example.invalid/new.pth", "new.pth", "0" * 64))
    with pytest.raises(KeyError, match="no size"):
        weights.checkpoints_readme([new])
    with pytest.raises(ValueError, match="no SHA-256"):  # a Hub file whose declared sum was not written down
        hub = HubCheckpoint("a/b", "sam2.1_hiera_tiny.pt")
        weights.checkpoints_readme([replace(PROPOSERS["sam2.1_hiera_t"], weights=hub)])


def test_git_keeps_the_checkpoint_readme_and_ignores_the_weights(tmp_path):
    import shutil
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "checkpoints/sam_vit_b_01ec64.pth",
                              "checkpoints/README.md"], cwd=root, capture_output=True, text=True).stdout.split()
    assert ignored == ["checkpoints/sam_vit_b_01ec64.pth"]
