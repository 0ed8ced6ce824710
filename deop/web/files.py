"""Where the app keeps its files and finds its assets: its own private folder (uploads, Gradio's cache,
results, the examples' cache), the example images, and the upload size limit."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import OptionError

ROOT = Path(__file__).resolve().parents[2]  # the repository: app.py, assets/
ASSETS = ROOT / "assets"
MAX_FILE_SIZE = "25mb"


def max_file_bytes(size: str = MAX_FILE_SIZE) -> int:
    return int(size.removesuffix("mb")) * 2**20


def examples() -> list[dict[str, Any]]:
    """The clickable examples: ``{"image": path relative to the repository, "vocabulary": text}``."""
    return json.loads((ASSETS / "examples.json").read_text())


def work_dir() -> Path:
    """This app's own folder for uploads, Gradio's cache, results and the examples' cache: $DEOP_APP_DIR,
    else a folder of this user's in the system temp directory, not the machine-wide /tmp/gradio that every
    Gradio app on the host shares (and whose files any of them serves to whoever knows a path)."""
    given = os.environ.get("DEOP_APP_DIR")
    uid = os.getuid() if hasattr(os, "getuid") else None  # no uids on Windows
    folder = Path(given or Path(tempfile.gettempdir()) / (f"deop-app-{uid}" if uid is not None else "deop-app"))
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:  # a file, or a dangling link, of that name
        raise OptionError(f"cannot make the app's folder {folder}: {exc.strerror or exc}; remove it or set "
                          "DEOP_APP_DIR to a folder of your own") from None
    if not given and uid is not None:  # a shared temp folder: another user may have made this name first
        st = folder.lstat()
        if folder.is_symlink() or st.st_uid != uid or st.st_mode & 0o077:
            raise OptionError(f"the app's folder {folder} is not this user's own (owner uid {st.st_uid}, mode "
                              f"{st.st_mode & 0o777:o}); remove it or set DEOP_APP_DIR to a folder of your own")
    return folder
