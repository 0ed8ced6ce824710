"""The web app's shape: small files and functions with one job each, no import cycle in the package, a layout
that only creates components, an event table whose handlers are the server's methods, and menus that come
from the registries."""

from __future__ import annotations

import ast
from pathlib import Path

import gradio as gr
import pytest

from conftest import SMALL_CONFIG

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "deop" / "web"


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_the_web_app_is_small_files_of_small_functions():
    sizes = {p.name: len(p.read_text().splitlines()) for p in WEB.glob("*.py")}
    assert max(sizes.values()) <= 300, sizes
    assert len((ROOT / "app.py").read_text().splitlines()) < 60
    long = {(p.name, name): n for p in [*WEB.glob("*.py"), ROOT / "app.py"] for name, n in _functions(p) if n > 80}
    assert long == {}
    assert dict(_functions(WEB / "app.py"))["build_app"] < 60


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runs_on_import(node: ast.stmt) -> bool:
    """False for ``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` blocks."""
    return not (isinstance(node, ast.If) and any(s in ast.unparse(node.test) for s in ("TYPE_CHECKING", "__main__")))


def import_graph() -> dict[str, set[str]]:
    """deop's modules and the deop modules each imports when it is imported (top level, not in functions)."""
    modules = {_module(p): p for p in (ROOT / "deop").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for stmt in filter(_runs_on_import, ast.parse(path.read_text()).body):
            for node in ast.walk(stmt):
                if isinstance(node, ast.Import):
                    found |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".") \
                        if node.level else node.module
                    found |= {base, *(f"{base}.{a.name}" for a in node.names)}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_import_cycle_in_the_package():
    graph, state, cycles = import_graph(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                cycles.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other, [*path, other])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
    assert "deop.web.server" in graph["deop.web.app"]
    assert not graph["deop.web.layout"] & {"deop.web.server", "deop.web.events", "deop.web.app"}  # no handler


def test_only_the_web_package_imports_gradio():
    import re

    for path in (ROOT / "deop").rglob("*.py"):
        if not path.is_relative_to(WEB):  # gradio_client (bench-app's) is another package
            assert not re.search(r"(?m)^\s*(from|import) gradio(\.|\s|$)", path.read_text()), path


@pytest.fixture(scope="module")
def server(segmenter, tmp_path_factory):
    from deop.web.server import Server

    return Server(SMALL_CONFIG, calibrate=False, folder=tmp_path_factory.mktemp("app"))


def test_the_layout_only_creates_components_from_the_registries(server):
    from deop.config import APP_OPTIONS
    from deop.methods import METHOD_CHOICES
    from deop.presets import PRESETS
    from deop.web.layout import build_page

    with gr.Blocks() as demo:
        page = build_page(True, "status", server.defaults, server.models, server.options, server.sessions.drop)
    assert demo.fns == {}  # no event wired
    assert [c[1] for c in page.proposal_model.choices] == [kind for _, kind in server.models]
    assert [c[1] for c in page.method.choices] == list(METHOD_CHOICES)
    assert [c[1] for c in page.preset.choices] == ["", *PRESETS]
    assert list(page.widgets) == list(APP_OPTIONS)
    inputs = [page[name] for name in server.input_names]  # /segment's inputs: one component each
    assert len({id(c) for c in inputs}) == len(inputs) and page["image"] is page.image
    assert all(page[name] is page.widgets[name] for name in APP_OPTIONS)


def test_every_event_calls_a_server_method(server):
    from deop.web import events
    from deop.web.layout import build_page

    with gr.Blocks() as demo:
        page = build_page(False, "status", server.defaults, server.models, server.options, server.sessions.drop)
        rows = events.table(demo, page, server)
    methods = {name for name in dir(server) if callable(getattr(server, name))}
    for row in rows:
        if row.handler is not None:  # None: the debounce, which runs in the browser
            assert row.handler.__name__ in methods, row
    assert {r.api_name for r in rows if r.handler and r.more.get("api_visibility", "public") == "public"} == {
        "segment", "rerun", "heatmap", "click_legend", "click_pixel", "add_segment", "compare_variants", "status",
        "downloads"}
