"""Model weights: fetch, verify and load checkpoint files, failing with one message a user can act on;
or, with --random-weights, the same seeded random weights on every run.

A checkpoint is only ever visible at its final path once its SHA-256 has been checked, so an interrupted
download can never be mistaken for a good file later. Every failure (offline, refused, corrupt) names the
file, its URL, the exact path to place it at by hand, and the ``--random-weights`` escape for smoke tests.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .errors import WeightsError

CHUNK = 1 << 20
ALLOWED_SCHEMES = ("http", "https", "file")
CHECKPOINT_DIR_ENV = "DEOP_CHECKPOINT_DIR"
RANDOM_WEIGHTS_HINT = ("To try the pipeline without any weights, run with --random-weights "
                       "(real shapes and timings, meaningless labels).")


RANDOM_SEED = 0


@contextmanager
def seeded_init(seed: int = RANDOM_SEED) -> Iterator[None]:
    """Build models under this for the same random weights on every run: masks, labels and timings of
    --random-weights then repeat from one launch to the next (a benchmark can be re-run and compared),
    and the caller's own random state is left as it was. Models are initialised on the CPU."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file at a URL with its published SHA-256 (SAM's, MobileSAM's), kept in the checkpoint
    folder."""

    url: str
    filename: str
    sha256: str
    source: str = ""  # where the checksum was published, for the README and error messages

# Hashing a 2.5 GB checkpoint takes seconds; a file whose (path, size, mtime_ns) is unchanged keeps its hash.
_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_HASH_CACHE_SIZE = 32


def default_checkpoint_dir() -> Path:
    """$DEOP_CHECKPOINT_DIR, else ``checkpoints/`` beside the package, so a clone works out of the box."""
    env = os.environ.get(CHECKPOINT_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "checkpoints"


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _manual_hint(url: str, dest: Path) -> str:
    return (f"Download {url} by hand (a browser or `curl -L -o {dest} {url}`) and put it at {dest} "
            f"(or point ${CHECKPOINT_DIR_ENV} at the folder that holds it). {RANDOM_WEIGHTS_HINT}")


def _cache_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _remember_hash(path: Path, digest: str) -> None:
    if len(_HASH_CACHE) >= _HASH_CACHE_SIZE:
        _HASH_CACHE.pop(next(iter(_HASH_CACHE)))
    _HASH_CACHE[_cache_key(path)] = digest


def _cached_sha256(path: Path) -> str:
    key = _cache_key(path)
    if key not in _HASH_CACHE:
        _remember_hash(path, sha256_of(path))
    return _HASH_CACHE[key]


def download(url: str, dest: Path, sha256: str | None, progress: bool = True, timeout: float = 30) -> Path:
    """Fetch ``url`` to ``dest`` through a temporary file beside it, renamed into place only once verified.

    The temporary file lives in dest's own folder so the final ``os.replace`` is atomic (same filesystem).
    """
    dest = Path(dest)
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise WeightsError(f"refusing to download {url}: only {', '.join(ALLOWED_SCHEMES)} URLs are allowed. "
                           + _manual_hint(url, dest))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".part-", dir=dest.parent)
    except OSError as exc:
        raise WeightsError(f"cannot write {dest.name} into {dest.parent}: {exc}. "
                           + _manual_hint(url, dest)) from exc
    tmp = Path(tmp_name)
    done = False
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress, leave=False) as bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise WeightsError(f"the download of {dest.name} from {url} stopped after {received} of {total} "
                               "bytes (connection closed). " + _manual_hint(url, dest))
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise WeightsError(f"the download of {dest.name} from {url} is corrupt: expected SHA-256 "
                               f"{sha256}, got {actual}. " + _manual_hint(url, dest))
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a shared checkpoint folder should stay readable
        os.replace(tmp, dest)
        done = True
        _remember_hash(dest, actual)
        return dest
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError, HTTPError, socket timeouts and ConnectionError are all OSError subclasses.
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # it holds the open response socket
        reason = exc.reason if type(exc) is urllib.error.URLError else exc
        raise WeightsError(f"could not download {dest.name} from {url} ({type(exc).__name__}: {reason}). "
                           + _manual_hint(url, dest)) from exc
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


def ensure_checkpoint(ckpt: Checkpoint, title: str, checkpoint_dir: Path | None = None,
                      download_missing: bool = True, progress: bool = True) -> Path:
    """The path of a verified checkpoint in the checkpoint folder, fetching it (again, when corrupt) if
    allowed. `title` names the model in messages ("SAM vit_b")."""
    path = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir()
    path = path / ckpt.filename
    if path.is_file():
        if _cached_sha256(path) == ckpt.sha256.lower():
            return path
        if not download_missing:
            raise WeightsError(f"the {title} checkpoint at {path} is corrupt or truncated (SHA-256 "
                               "mismatch) and downloads are off. Delete it, then "
                               + _manual_hint(ckpt.url, path))
        warnings.warn(f"the {title} checkpoint at {path} is corrupt or truncated (SHA-256 mismatch); "
                      "downloading it again", stacklevel=2)
    elif not download_missing:
        raise WeightsError(f"the {title} checkpoint is missing: no file at {path}, and downloads are off. "
                           + _manual_hint(ckpt.url, path))
    return download(ckpt.url, path, ckpt.sha256, progress=progress)


def ensure_weights(source: Checkpoint | HubCheckpoint, title: str, checkpoint_dir: Path | None = None,
                   download_missing: bool = True) -> Path:
    """A verified local copy of a model's weights, wherever they are published."""
    if isinstance(source, HubCheckpoint):
        return ensure_hub_checkpoint(source, checkpoint_dir, download_missing)
    return ensure_checkpoint(source, title, checkpoint_dir, download_missing)


def load_state_dict(path: Path) -> dict:
    """Read a state dict without running pickled code (weights_only), so a tampered file cannot execute."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip, EOF and unsafe-global errors all mean the same thing to a user
        raise WeightsError(f"{path} is corrupt or not a plain weights file ({_short_reason(exc)}). "
                           "Delete it and let it be fetched again, or replace it by hand. "
                           + RANDOM_WEIGHTS_HINT) from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict; delete it and let it "
                           "be fetched again. " + RANDOM_WEIGHTS_HINT)
    return state


def _short_reason(exc: BaseException) -> str:
    """torch's weights_only errors are a page of advice to re-run unsafely; keep only the actual cause."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text, re.S)
    detail = found.group(1).strip() if found else (text.strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def clip_weights_error(model: str, pretrained: str, exc: BaseException) -> WeightsError:
    """open_clip's own errors when offline are opaque network traces; this one says what to do."""
    return WeightsError(
        f"could not load the CLIP weights {model} / {pretrained!r} ({type(exc).__name__}: {exc}). open_clip "
        "fetches them through the Hugging Face cache ($HF_HOME, by default ~/.cache/huggingface); on a "
        "machine without internet, copy a cache that already holds them there and set HF_HUB_OFFLINE=1. "
        + RANDOM_WEIGHTS_HINT)


@dataclass(frozen=True)
class HubCheckpoint:
    """A checkpoint published on the Hugging Face Hub (SAM 2.1's), fetched into the Hub's cache."""

    repo_id: str
    filename: str
    # the SHA-256 the Hub declares for the file, for the checkpoint README; a download is checked against
    # the name the Hub gives its cached blob (``_verify_hub_blob``)
    sha256: str = ""

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}"


def _verify_hub_blob(path: Path) -> bool:
    """True when the cached file's SHA-256 is the one the Hub declared for it.

    Meta publishes no checksums for SAM 2.1, but the Hub names each cached large (LFS) file after the
    SHA-256 it reported at download time, so that name is the integrity check; any other name (a file
    placed by hand) is taken as it is and checked by loading it strictly.
    """
    blob = Path(path).resolve()
    if not re.fullmatch(r"[0-9a-f]{64}", blob.name):
        return True
    return _cached_sha256(blob) == blob.name


def ensure_hub_checkpoint(ckpt: HubCheckpoint, checkpoint_dir: Path | None = None,
                          download_missing: bool = True, hub_download=None) -> Path:
    """A file in ``checkpoint_dir`` (placed by hand) if there is one, else the verified Hub copy.

    ``hub_download`` defaults to ``huggingface_hub.hf_hub_download`` (progress bar, resumable, shared
    cache); a corrupt cached copy is fetched once more before giving up.
    """
    local = (Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir()) / ckpt.filename
    if local.is_file():
        return local
    if hub_download is None:
        from huggingface_hub import hf_hub_download as hub_download
    for attempt in range(2):
        try:
            path = Path(hub_download(repo_id=ckpt.repo_id, filename=ckpt.filename,
                                     local_files_only=not download_missing, force_download=attempt > 0))
        except Exception as exc:  # offline, refused, not cached with downloads off: one message for all
            where = "is not in the Hugging Face cache and downloads are off" if not download_missing else \
                f"could not be downloaded ({type(exc).__name__}: {_short_reason(exc)})"
            raise WeightsError(f"{ckpt.filename} from {ckpt.repo_id} {where}. "
                               + _manual_hint(ckpt.url, local)) from exc
        if _verify_hub_blob(path):
            return path
        if not download_missing or attempt:
            break
        warnings.warn(f"the cached {ckpt.filename} is corrupt (SHA-256 differs from the Hub's); downloading "
                      "it again", stacklevel=2)
    raise WeightsError(f"the cached {ckpt.filename} at {path} is corrupt (SHA-256 differs from the one the "
                       "Hugging Face Hub declared). Delete it, then " + _manual_hint(ckpt.url, local))


def load_into(model, path: Path, title: str, key: str | None = None) -> None:
    """Load a checkpoint (``state[key]`` when the file nests it) into `model` with strict keys; a file of
    another model is a clear error, not a traceback."""
    state = load_state_dict(path)
    if key is not None:
        state = state.get(key, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # wrong keys or shapes: a file of another kind
        raise WeightsError(f"{path} does not hold {title} weights ({exc}); delete it to fetch it again") from exc


# -- the checkpoint folder's README ---------------------------------------------------------------------------
# Each checkpoint file's size in bytes, for ``checkpoints/README.md``, which is generated from these and the
# proposal models' registry. Their SHA-256 are beside their builders: SAM's and MobileSAM's as their
# ``Checkpoint`` pins it, SAM 2.1's as the Hugging Face Hub declares it (its LFS object id, the same bytes
# as Meta's own download).
SIZES: dict[str, int] = {
    "sam_vit_b_01ec64.pth": 375_042_383,
    "sam_vit_l_0b3195.pth": 1_249_524_607,
    "sam_vit_h_4b8939.pth": 2_564_550_879,
    "mobile_sam.pt": 40_728_226,
    "sam2.1_hiera_tiny.pt": 156_008_466,
    "sam2.1_hiera_small.pt": 184_416_285,
    "sam2.1_hiera_base_plus.pt": 323_606_802,
    "sam2.1_hiera_large.pt": 898_083_611,
}
README_HEAD = """# checkpoints/

The proposal models' weights go in this folder (or in the one `$DEOP_CHECKPOINT_DIR` names). Nothing is
bundled and git ignores everything here but this README. SAM's and MobileSAM's files are fetched into this
folder on first use and checked against the SHA-256 below before they are used; SAM 2.1's come through the
Hugging Face cache unless a file of that name is here. On a machine without internet, fetch the file
elsewhere with the command given (from the repository's root), check it (`sha256sum FILE`), and put it
here under that name.

CLIP's weights are not kept here: open_clip fetches them into the Hugging Face cache (`$HF_HOME`).

This file is generated from the proposal models' registry (`deop/proposers`) and the sizes in
`deop/weights.py` (`python -m deop.weights > checkpoints/README.md`); a test fails when they differ.
"""


def checkpoints_readme(specs) -> str:
    """``checkpoints/README.md``: for each proposal model with weights (``deop.proposers.ProposerSpec``), its
    file, size, SHA-256 and how to fetch it by hand."""
    parts = [README_HEAD]
    for spec in specs:
        source = spec.weights
        if source is None:  # random weights only (tests), or weights without a published checksum
            parts.append(spec.family.weights_readme(spec) or "")
            continue
        if source.filename not in SIZES:
            raise KeyError(f"{source.filename} ({spec.name}) has no size in deop.weights.SIZES")
        if not source.sha256:
            raise ValueError(f"{source.filename} ({spec.name}) has no SHA-256 in its registry entry")
        size, sha256 = SIZES[source.filename], source.sha256
        if isinstance(source, HubCheckpoint):
            where = (f"on first use from the Hugging Face Hub's `{source.repo_id}` into its cache, checked against "
                     "the SHA-256 the Hub declares (this one); a file of this name here is used instead")
        else:
            pinned = f" (as {source.source} pins it)" if source.source else ""
            where = f"on first use into this folder, checked against this SHA-256{pinned}"
        parts.append(f"\n## {spec.title} (`--sam {spec.name}`)\n\n"
                     f"- file: `{source.filename}`, {size:,} bytes ({size / 2**20:,.0f} MiB)\n"
                     f"- SHA-256: `{sha256}`\n"
                     f"- fetched: {where}\n"
                     f"- by hand: `curl -L -o checkpoints/{source.filename} {source.url}`\n")
    return "".join(parts)


if __name__ == "__main__":  # run as a script, this file is another module than the registry's deop.weights
    from deop.proposers import PROPOSERS
    from deop.weights import checkpoints_readme as readme

    print(readme(PROPOSERS.values()), end="")
