"""The released DeOP weights: ``model_final.pth``, fetched from the authors' Google Drive or placed by hand,
checked strictly, converted once to safetensors in the checkpoint folder and read from there afterwards.

The file is a detectron2 checkpoint: a pickle whose ``model`` dict holds every tensor of the trained model
(generator, CLIP with learned positions, learned prompt, no-object embedding, classification-anchor
decoder), possibly beside training state (optimizer, scheduler, iteration). A pickle can run code when it
is read, so it is read with ``torch.load(weights_only=True)`` only: plain containers, numbers, strings and
tensors. A file that needs anything else (a class, a function) is refused, naming the file and the object
it asked for, and nothing of it runs. No allow-list is needed: detectron2 saves ``state_dict()`` results
and plain numbers, which the restricted loader already reads.

The authors publish no checksum, so the file cannot be verified against one: its structure is checked
instead (every tensor of ``model_final_keys.txt`` present with its shape, nothing else inside ``model``,
nothing beside it but training state), and its SHA-256 is printed so that a user can compare it with
someone else's copy. The converted file records that SHA-256 and the source's size and modification time;
a source that changed since is converted again.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import MissingPackageError, WeightsError
from ..weights import RANDOM_WEIGHTS_HINT, _short_reason, default_checkpoint_dir, sha256_of
from .keymap import expected_keys, part_of

log = logging.getLogger(__name__)

DRIVE_ID = "1TN1krQWPxbDFtpTFlEpGOf40FRByKwf4"  # the official README's "model weight" link
CHECKPOINT_URL = f"https://drive.google.com/file/d/{DRIVE_ID}/view"
FILENAME = "deop_model_final.pth"  # the authors call it model_final.pth; named apart from other models' files
CONVERTED = "deop_model_final.safetensors"
PATH_SETTING = "--deop-checkpoint / $DEOP_CHECKPOINT"
# What a detectron2 trainer saves beside "model" (Checkpointer.save, DefaultTrainer.state_dict).
TRAINING_STATE = frozenset({"optimizer", "scheduler", "iteration", "trainer", "_trainer", "grad_scaler"})
NO_CHECKSUM = "the authors publish no checksum, so this is not verified against a published value"
MAX_NAMED = 20


def manual_hint(dest: Path) -> str:
    return (f"Download DeOP's model_final.pth by hand from {CHECKPOINT_URL} (a browser; Google Drive asks to "
            f"confirm a file this large) and save it as {dest}, or give its path with {PATH_SETTING}. "
            + RANDOM_WEIGHTS_HINT)


def download_checkpoint(dest: Path, progress: bool = True, downloader: Callable[..., Any] | None = None) -> Path:
    """Fetch the checkpoint with gdown into a temporary file beside `dest`, renamed into place once complete
    (an interrupted download never sits at `dest`). `downloader` defaults to ``gdown.download``."""
    dest = Path(dest)
    if downloader is None:
        try:
            import gdown
        except ImportError as exc:
            raise MissingPackageError("downloading DeOP's checkpoint needs the gdown package: pip install gdown. "
                                      + manual_hint(dest)) from exc
        downloader = gdown.download
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".part-", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise WeightsError(f"cannot write {dest.name} into {dest.parent}: {exc}. " + manual_hint(dest)) from exc
    tmp = Path(tmp_name)
    try:
        try:
            got = downloader(id=DRIVE_ID, output=str(tmp), quiet=not progress)
        except Exception as exc:  # offline, refused, quota exceeded: gdown raises many kinds; one message for all
            raise WeightsError(f"could not download {FILENAME} from Google Drive ({type(exc).__name__}: "
                               f"{_short_reason(exc)}). " + manual_hint(dest)) from exc
        if got is None or not tmp.is_file() or tmp.stat().st_size == 0:
            raise WeightsError(f"the download of {FILENAME} from Google Drive gave no file. " + manual_hint(dest))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The ``model`` dict of a detectron2 checkpoint, read without running any of its code, checked strictly."""
    import torch

    path = Path(path)
    try:
        try:  # memory-mapped: the 875 MB are paged in as they are checked and converted, not held twice
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # a pre-1.6 (non-zip) file
    except Exception as exc:  # every failure of the restricted loader is a bad file to the user
        reason = _short_reason(exc)
        if "global" in str(exc).lower():
            raise WeightsError(f"refused {path}: it asks for Python objects a weights file never needs ({reason}), "
                               "and reading it would run code from the file, so nothing of it was loaded. "
                               + manual_hint(path)) from exc
        raise WeightsError(f"{path} is corrupt or not a PyTorch checkpoint ({reason}). " + manual_hint(path)) from exc
    if not isinstance(data, Mapping) or "model" not in data:
        kind = type(data).__name__ if not isinstance(data, Mapping) else f"dict with {', '.join(map(str, data))}"
        raise WeightsError(f"{path} is not a detectron2 checkpoint (no 'model' dict: it holds a {kind}). "
                           + manual_hint(path))
    extra = sorted(str(k) for k in data if k != "model" and k not in TRAINING_STATE)
    if extra:
        raise WeightsError(f"{path} holds {', '.join(extra)} beside 'model', which DeOP's checkpoint does not "
                           f"(only training state: {', '.join(sorted(TRAINING_STATE))}). " + manual_hint(path))
    state = data["model"]
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: its 'model' entry is a {type(state).__name__}, not a dict of tensors")
    check_state(state, str(path))
    return dict(state)


def _named(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED])
    return shown + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


def check_state(state: Mapping[str, Any], source: str) -> None:
    """Every expected tensor present with its shape and nothing else; the error names each difference (a
    missing key beside an unexpected one of the same shape is reported as a likely rename)."""
    import torch

    check_shapes({k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()}, source)


def check_shapes(found: Mapping[str, tuple[int, ...] | None], source: str) -> None:
    """``check_state`` on names and shapes alone (None: not a tensor), e.g. read from a safetensors header."""
    expected = expected_keys()
    not_tensors = [k for k, v in found.items() if v is None]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected and k not in not_tensors]
    shapes = [f"{k} is {list(found[k])}, expected {list(expected[k])}"
              for k in expected if k in found and k not in not_tensors and tuple(found[k]) != expected[k]]
    renamed, left = [], list(unexpected)
    for k in list(missing):
        match = next((u for u in left if tuple(found[u]) == expected[k]
                      and u.rsplit(".", 1)[-1] == k.rsplit(".", 1)[-1]), None)
        if match is not None:
            renamed.append(f"{k} (found as {match}?)")
            missing.remove(k)
            left.remove(match)
    problems = []
    if renamed:
        problems.append(f"renamed: {_named(renamed)}")
    if missing:
        problems.append(f"missing: {_named(missing)}")
    if left:
        problems.append(f"unexpected: {_named(left)}")
    if shapes:
        problems.append(f"wrong shape: {_named(shapes)}")
    if not_tensors:
        problems.append(f"not tensors: {_named(not_tensors)}")
    if problems:
        raise WeightsError(f"{source} does not hold DeOP's released model ({len(expected)} tensors expected): "
                           + "; ".join(problems) + ". " + RANDOM_WEIGHTS_HINT)


def _source_stamp(path: Path) -> dict[str, str]:
    st = path.stat()
    return {"source_size": str(st.st_size), "source_mtime_ns": str(st.st_mtime_ns)}


def convert(state: Mapping[str, Any], dest: Path, metadata: dict[str, str]) -> Path:
    """Write `state` as safetensors at `dest` through a temporary file beside it (atomic rename)."""
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for k, v in state.items():  # safetensors refuses tensors that share memory; detectron2 never ties any, but
        v = v.detach().contiguous()  # a hand-made file might
        if v.numel() and v.data_ptr() in seen:
            v = v.clone()
        seen.add(v.data_ptr())
        tensors[k] = v
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".part-", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _converted_for(converted: Path, source: Path | None) -> bool:
    """True when the converted file exists and was made from `source` as it is now (or `source` is gone)."""
    if not converted.is_file():
        return False
    if source is None or not source.is_file():
        return True
    from safetensors import safe_open

    try:
        with safe_open(str(converted), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # an unreadable cache is simply made again
        return False
    return all(meta.get(k) == v for k, v in _source_stamp(source).items())


def _read_converted(converted: Path, parts: tuple[str, ...] | None) -> dict[str, Any]:
    """The converted file's tensors (only those of `parts`, if given), its header checked strictly first."""
    from safetensors import safe_open

    try:
        with safe_open(str(converted), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            check_shapes(shapes, str(converted))
            return {k: f.get_tensor(k) for k in shapes if parts is None or part_of(k) in parts}
    except WeightsError:
        raise
    except Exception as exc:  # a damaged cache: say so and how to rebuild it
        raise WeightsError(f"the converted DeOP checkpoint {converted} is damaged ({_short_reason(exc)}); "
                           "delete it to convert the original again") from exc


def load_trained_state(path: str | os.PathLike | None = None, checkpoint_dir: Path | None = None,
                       download: bool = True, progress: bool = True,
                       downloader: Callable[..., Any] | None = None,
                       parts: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The released model's tensors (detectron2 names). `path`: a checkpoint the user placed (the
    ``--deop-checkpoint`` setting); else ``deop_model_final.pth`` in the checkpoint folder, downloaded if
    missing and `download`. The first load converts it to ``deop_model_final.safetensors`` beside the
    other weights; later loads read that, only the tensors of `parts` (``keymap.PARTS`` names) if given,
    so that each module holds only its own part in memory while loading. On the first load the tensors are
    memory-mapped from the pickle: copy them into modules (``load_state_dict`` does), do not keep them."""
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir()
    converted = folder / CONVERTED
    source = Path(path).expanduser() if path else folder / FILENAME
    if path and not source.is_file():
        raise WeightsError(f"no DeOP checkpoint at {source} (from {PATH_SETTING}). " + manual_hint(source))
    if _converted_for(converted, source):
        return _read_converted(converted, parts)
    if not source.is_file():
        if not download:
            raise WeightsError(f"DeOP's checkpoint is missing: no file at {source}, and downloads are off. "
                               + manual_hint(source))
        download_checkpoint(source, progress, downloader)
    state = read_checkpoint(source)
    digest = sha256_of(source)
    note = f"DeOP checkpoint {source}: SHA-256 {digest} ({NO_CHECKSUM}); structure checked: {len(state)} tensors"
    log.info(note)
    print(note, file=sys.stderr)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        convert(state, converted, {"source_sha256": digest, "source_name": source.name, **_source_stamp(source)})
    except OSError as exc:  # a read-only folder: run from the pickle each time rather than fail
        log.warning("could not write %s (%s); the checkpoint will be read from %s each time", converted, exc, source)
    return state if parts is None else {k: v for k, v in state.items() if part_of(k) in parts}
