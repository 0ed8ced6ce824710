"""The README's Python example runs as written (with the test models and a generated photo), so the
documented API cannot drift from the package."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from conftest import SMALL_CONFIG, scene

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_example_runs(segmenter, tmp_path, monkeypatch):
    code = python_example()
    assert 'SegmenterConfig(device="auto")' in code and '"photo.jpg"' in code
    Image.fromarray(scene(seed=8)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    # The real default models need downloads; the example gets the session's random-weight models instead.
    monkeypatch.setattr("deop.Segmenter", lambda config: segmenter)
    namespace = {"SMALL_CONFIG": SMALL_CONFIG}
    exec(compile(code.replace('SegmenterConfig(device="auto")', "SMALL_CONFIG"), str(README), "exec"), namespace)
    result = namespace["result"]
    assert set(result.methods) == {"one-pass", "crop"} and result.agreement is not None
    assert namespace["top"].id == 0 and result.mask(0).shape == (120, 160)
