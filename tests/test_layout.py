"""The package's shape: a light face, proposal families only inside deop/proposers, settings described once,
and one precedence rule (flag, then environment, then default) for every setting."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deop.arguments import add_model_arguments, add_option_arguments, config_from_args, env_default
from deop.config import APP_OPTIONS, ProposalConfig, SegmenterConfig, SegmentOptions, options_of, request_options
from deop.errors import OptionError
from deop.models import ModelCache

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "deop"
FAMILY_PACKAGES = {"segment_anything", "sam2", "mobile_sam"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("statement", ["import deop", "import deop.rle", "import deop.config",
                                       "import deop.proposers", "import deop.methods", "import deop.commands"])
def test_the_package_face_imports_no_torch(statement):
    code = f"import sys; {statement}; print(sorted(m for m in ('torch', 'open_clip', 'gradio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_help_answers_without_loading_any_network():
    code = ("import sys, contextlib, io\nfrom deop.commands import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['segment', '--help'])\n    except SystemExit: pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_only_the_proposal_package_knows_the_model_families():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "proposers"):
            continue
        found = _imports(path) & FAMILY_PACKAGES
        text = path.read_text()
        found |= {word for word in ("is_sam2", "SAM2_MODELS", "sam_mask_decoder") if word in text}
        if found:
            offenders[str(path.relative_to(ROOT))] = sorted(found)
    assert offenders == {}


def test_the_package_never_imports_its_commands_or_the_app():
    """Commands and app.py sit on top of the package; nothing below imports them (no cycles)."""
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "commands") or path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""  # `from app import` is app.py; `from .app import` a module here
                assert "commands" not in module.split(".") and (module, node.level) != ("app", 0), (path, module)


def test_every_app_option_is_described_with_a_widget_and_validated():
    options = request_options()
    assert set(APP_OPTIONS) <= set(options)
    for name in APP_OPTIONS:
        option = options[name]
        assert option.meta.widget is not None and option.meta.help and option.meta.stage
        w = option.meta.widget
        if w.kind == "slider":  # the slider's range lies inside what the option accepts
            assert option.check(w.minimum) == w.minimum and option.check(w.maximum) == w.maximum
    with pytest.raises(OptionError, match="points_per_side must be between 4 and 48, got 60"):
        options["points_per_side"].check(60, app=True)
    assert options["points_per_side"].check(60) == 60  # the library itself accepts it


def test_every_option_has_a_flag_whose_help_names_its_default():
    import argparse

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    add_option_arguments(parser, preset="fast")
    flags = {a.dest: a for a in parser._actions}
    for cls in (SegmenterConfig, SegmentOptions, ProposalConfig):
        for option in options_of(cls):
            assert option.name in flags, option.name
    assert "(default 10)" in flags["points_per_side"].help  # the fast preset's value
    assert "$DEOP_DEVICE" in flags["device"].help


def _parse(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    add_option_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_flag_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("DEOP_DEVICE", raising=False)
    monkeypatch.delenv("DEOP_RANDOM_WEIGHTS", raising=False)
    assert _parse([]).device == "auto" and _parse([]).random_weights is False
    monkeypatch.setenv("DEOP_DEVICE", "cpu")
    monkeypatch.setenv("DEOP_RANDOM_WEIGHTS", "1")
    assert _parse([]).device == "cpu" and _parse([]).random_weights is True
    assert _parse(["--device", "cuda:1"]).device == "cuda:1"  # the flag wins over the environment
    assert _parse([]).options.proposals.pred_iou_thresh == 0.0  # random weights from the environment keep masks
    monkeypatch.setenv("DEOP_PRESET", "fast")
    assert _parse([]).options.proposals.points_per_side == 10 and _parse(["--preset", "demo"]).options.proposals \
        .points_per_side == 20
    monkeypatch.setenv("DEOP_PRESET", "turbo")
    with pytest.raises(OptionError, match="preset must be one of demo, fast, quality; got 'turbo'"):
        _parse([])
    monkeypatch.delenv("DEOP_PRESET")
    monkeypatch.setenv("DEOP_RANDOM_WEIGHTS", "maybe")
    with pytest.raises(OptionError, match="DEOP_RANDOM_WEIGHTS='maybe' is not a valid random_weights"):
        _parse([])
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8123")
    assert env_default("GRADIO_SERVER_PORT", 7860, int) == 8123
    monkeypatch.setenv("GRADIO_SERVER_PORT", "eighty")
    with pytest.raises(OptionError, match="GRADIO_SERVER_PORT='eighty' must be a int"):
        env_default("GRADIO_SERVER_PORT", 7860, int)


def test_the_app_takes_its_port_flag_over_the_environment(monkeypatch):
    """app.py reads GRADIO_SERVER_PORT only when --port is not given (the rule every setting follows)."""
    from deop.web import app

    seen = {}
    monkeypatch.setattr(app, "build_app", lambda config, time_limit, **kw: seen.update(config=config))
    monkeypatch.setattr(app, "launch", lambda demo, **kw: seen.update(kw))
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8123")
    monkeypatch.setenv("DEOP_DEVICE", "cpu")
    monkeypatch.setattr(sys, "argv", ["app.py", "--port", "8200", "--device", "auto"])
    app.main()
    assert seen["server_port"] == 8200 and seen["config"].device == "auto"
    monkeypatch.setattr(sys, "argv", ["app.py"])
    app.main()
    assert seen["server_port"] == 8123 and seen["config"].device == "cpu"


def test_models_load_under_their_own_locks():
    """A slow model loading does not hold up another one; the same model is built once however many ask."""
    cache = ModelCache()
    started, release, built = threading.Event(), threading.Event(), []

    def slow():
        started.set()
        release.wait(30)
        built.append("slow")
        return "slow"

    threads = [threading.Thread(target=cache.get, args=(("slow",), slow)) for _ in range(3)]
    for t in threads:
        t.start()
    assert started.wait(30)
    t0 = time.monotonic()
    assert cache.get(("fast",), lambda: "fast") == "fast"
    assert time.monotonic() - t0 < 5  # not queued behind the slow build
    release.set()
    for t in threads:
        t.join(30)
    assert built == ["slow"] and cache.get(("slow",), slow) == "slow"


def test_a_bad_app_setting_is_one_line_and_exit_status_2(monkeypatch, capsys):
    import app  # the Space's entry point: python app.py

    monkeypatch.setenv("GRADIO_SERVER_PORT", "eighty")
    monkeypatch.setattr(sys, "argv", ["app.py"])
    with pytest.raises(SystemExit) as info:
        app.run()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: environment variable GRADIO_SERVER_PORT='eighty'")
    assert "Traceback" not in err


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="no uids here")
def test_the_apps_folder_in_a_shared_temp_dir_must_be_this_users_own(monkeypatch, tmp_path):
    """Another local user could create /tmp/deop-app-<uid> first and read the uploads put there."""
    from deop.web import files

    monkeypatch.delenv("DEOP_APP_DIR", raising=False)
    monkeypatch.setattr(files.tempfile, "gettempdir", lambda: str(tmp_path))
    assert files.work_dir() == tmp_path / f"deop-app-{os.getuid()}"  # made here, private
    assert (tmp_path / f"deop-app-{os.getuid()}").stat().st_mode & 0o777 == 0o700
    (tmp_path / f"deop-app-{os.getuid()}").chmod(0o777)  # as if someone else had made it open
    with pytest.raises(OptionError, match="is not this user's own .* set DEOP_APP_DIR"):
        files.work_dir()


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="no uids here")
def test_a_dangling_link_in_place_of_the_apps_folder_is_named(monkeypatch, tmp_path):
    from deop.web import files

    monkeypatch.delenv("DEOP_APP_DIR", raising=False)
    monkeypatch.setattr(files.tempfile, "gettempdir", lambda: str(tmp_path))
    (tmp_path / f"deop-app-{os.getuid()}").symlink_to(tmp_path / "gone")
    with pytest.raises(OptionError, match="cannot make the app's folder .* set DEOP_APP_DIR"):
        files.work_dir()


def test_a_data_url_is_one_file_per_image_so_that_it_re_runs():
    import base64

    from deop.web.workarounds import data_url_file

    url = "data:image/png;base64," + base64.b64encode(b"the same bytes").decode()
    first, again = data_url_file(url), data_url_file(url)
    assert first == again and Path(first).read_bytes() == b"the same bytes"
    assert data_url_file(url.replace("c2FtZ", "c2FtZ").replace("Ynl0ZXM=", "Ynl0ZQ==")) != first
