"""The import structure, read from the source with `ast` (nothing here imports the project).

The engine (dtg_lib) sits below its two faces, the webui glue (dtg_webui) and the
standalone app (dtg_app): it never imports either, it never pulls a web framework
in at import time, and no project modules import each other in a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dtg_lib", "dtg_app", "dtg_webui")
FACES = ("dtg_app", "dtg_webui")
WEB_FRAMEWORKS = ("gradio", "fastapi", "starlette", "uvicorn")
# dtg_lib modules documented to import a web framework when imported. None: http_api
# imports fastapi inside create_router and its helpers, so dtg_lib imports without it.
WEB_FRAMEWORK_MODULES: dict[str, set[str]] = {}


@dataclass(frozen=True)
class ImportSite:
    module: str  # the importing module, dotted
    target: str  # what it imports, dotted and absolute
    line: int
    module_level: bool  # runs when the importing module is imported


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, module_level: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Every node under `node`, with whether it runs when the module is imported."""
    for child in ast.iter_child_nodes(node):
        runs = module_level and not isinstance(
            child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        )
        runs = runs and not _is_type_checking_block(child)
        yield child, runs
        yield from _walk(child, runs)


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package_of(module, path).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _import_module_string(node: ast.AST) -> str | None:
    """The module named by `importlib.import_module("x")` or `__import__("x")`."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    first = node.args[0]
    if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
        return first.value if isinstance(first.value, str) else None
    return None


def import_sites(module: str, path: Path, known: set[str]) -> Iterator[ImportSite]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node, module_level in _walk(tree, True):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, path, node)
            # `from pkg import sub` imports the module pkg.sub; `from pkg import name`, pkg.
            submodules = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known]
            whole = len(submodules) < len(node.names)
            targets = [*submodules, *([source] if whole else [])]
        elif (named := _import_module_string(node)) is not None:
            targets = [named]
        for target in targets:
            yield ImportSite(module, target, node.lineno, module_level)


def all_import_sites() -> list[ImportSite]:
    modules = project_modules()
    known = set(modules)
    return [site for name, path in modules.items() for site in import_sites(name, path, known)]


def _is_within(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def import_graph(sites: list[ImportSite], known: set[str]) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (at any depth in its code)."""
    graph: dict[str, set[str]] = {name: set() for name in known}
    for site in sites:
        if site.target in known and site.target != site.module:
            graph[site.module].add(site.target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, as [a, b, ..., a], or None."""
    done: set[str] = set()

    def visit(path: list[str]) -> list[str] | None:
        for following in sorted(graph[path[-1]]):
            if following in path:
                return [*path[path.index(following) :], following]
            if following not in done:
                cycle = visit([*path, following])
                if cycle:
                    return cycle
        done.add(path[-1])
        return None

    for start in sorted(graph):
        cycle = None if start in done else visit([start])
        if cycle:
            return cycle
    return None


def _where(site: ImportSite) -> str:
    return f"{site.module} line {site.line} imports {site.target}"


def test_the_engine_imports_neither_of_its_faces():
    upward = [
        _where(site)
        for site in all_import_sites()
        if _is_within(site.module, "dtg_lib")
        and any(_is_within(site.target, face) for face in FACES)
    ]
    assert upward == []


def test_the_engine_imports_no_web_framework_when_imported():
    found = [
        _where(site)
        for site in all_import_sites()
        if _is_within(site.module, "dtg_lib")
        and site.module_level
        and site.target.split(".")[0] in WEB_FRAMEWORKS
        and site.target.split(".")[0] not in WEB_FRAMEWORK_MODULES.get(site.module, set())
    ]
    assert found == []


def test_no_project_modules_import_each_other_in_a_circle():
    known = set(project_modules())
    cycle = find_cycle(import_graph(all_import_sites(), known))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


# The checks above must be able to fail: the same readers on small made-up sources.


def _sites_of(tmp_path: Path, sources: dict[str, str]) -> tuple[list[ImportSite], set[str]]:
    paths = {}
    for name, text in sources.items():
        path = tmp_path / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        paths[name] = path
    known = set(paths)
    sites = [
        site
        for name, path in paths.items()
        for site in import_sites(name.removesuffix(".__init__"), path, known)
    ]
    return sites, known


def test_the_readers_see_relative_lazy_and_importlib_imports(tmp_path):
    sites, _ = _sites_of(
        tmp_path,
        {
            "pkg.mod": (
                "import importlib\n"
                "from .other import thing\n"
                "from . import sibling\n"
                "def later():\n"
                "    import gradio\n"
                "    return importlib.import_module('dtg_app.server')\n"
            ),
            "pkg.other": "",
            "pkg.sibling": "",
        },
    )
    seen = {(s.target, s.module_level) for s in sites if s.module == "pkg.mod"}
    assert ("pkg.other", True) in seen and ("pkg.sibling", True) in seen
    assert ("gradio", False) in seen and ("dtg_app.server", False) in seen


def test_find_cycle_reports_the_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
