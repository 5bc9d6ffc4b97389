"""Code digests, the rerun trigger for code changes: each rule passes
`code_digest("<stage>.cli:<action function>")` as a param, so that a change in any module the
action runs reruns that rule, and a change elsewhere does not.

What an action runs is read from the source, without importing it: the stage's cli.py; the
modules that cli.py imports at module level and that the action's function imports; and,
from there on, every module of this package that those import in turn (anywhere in the file,
also inside functions), together with every string constant that names a module of the
package (registries that importlib loads, such as tag2mask.dataset.cli.READERS), the
__init__.py of every package on the way, and the files in the `templates/` folder of every
package it touches (the report's Jinja2 templates are code too). Imports inside the cli's other action functions do
not count, so a change in `peaks evaluate` does not rerun `peaks extract`.
"""

import ast
import functools
import hashlib
import importlib.util
import os
from pathlib import Path

PACKAGE = "tag2mask"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
DATA_FOLDERS = ("templates",)  # non-Python files a package runs, e.g. report/templates/


def code_digest(spec, package_dir=PACKAGE_DIR):
    """16 hex digits over the path and source of every file `spec` runs.

    spec: "stage.cli:function" (an action of a stage's cli.py) or a module name relative to
    the package ("core.store")."""
    package_dir = Path(package_dir)
    return _digest(spec, package_dir, _tree_stamp(package_dir))


@functools.lru_cache(maxsize=256)
def _digest(spec, package_dir, stamp):
    h = hashlib.sha256()
    for path in sorted(_source_files(spec, package_dir, stamp)):
        h.update(path.relative_to(package_dir).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def module_digest(name, package_dir=PACKAGE_DIR):
    """code_digest of a module given by its name: a module of this package (in full or
    relative to it, ".stage.module") with what it imports (code_digest), or another module (a
    plug-in's) as the source of its file."""
    if name.startswith("."):
        return code_digest(name[1:], package_dir)
    if name.startswith(PACKAGE + "."):
        return code_digest(name[len(PACKAGE) + 1:], package_dir)
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ValueError(f"code_digest: no module {name}")
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:16]


def source_files(spec, package_dir=PACKAGE_DIR):
    """The files `spec` runs (see the module docstring)."""
    package_dir = Path(package_dir)
    # every rule's digest walks the same files: walked again only when a file has changed
    return set(_source_files(spec, package_dir, _tree_stamp(package_dir)))


def _tree_stamp(package_dir):
    """The names and modification times of every file below the package."""
    stamp = []
    for folder, dirs, files in os.walk(package_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        stamp += [(folder, f, os.stat(os.path.join(folder, f)).st_mtime_ns) for f in files]
    return tuple(sorted(stamp))


@functools.lru_cache(maxsize=256)
def _source_files(spec, package_dir, stamp):
    return frozenset(_walk_source_files(spec, package_dir))


def _walk_source_files(spec, package_dir):
    module, _, function = spec.partition(":")
    path = _module_file(module, package_dir)
    if path is None:
        raise ValueError(f"code_digest: no module {PACKAGE}.{module} in {package_dir}")
    tree = _parse(path)
    if function:
        node = next((n for n in tree.body if isinstance(n, ast.FunctionDef)
                     and n.name == function), None)
        if node is None:
            raise ValueError(f"code_digest: {PACKAGE}.{module} has no function {function}")
        roots = _references(_module_level(tree), module, path, package_dir)
        roots |= _references(ast.walk(node), module, path, package_dir)
    else:
        roots = _references(ast.walk(tree), module, path, package_dir)
    seen = set()
    todo = [module, *roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")  # importing a.b.c runs a/__init__.py and a/b/__init__.py
        todo += [".".join(parts[:i]) for i in range(len(parts))]
        if name == module:
            continue  # the cli itself: only the references gathered above
        file = _module_file(name, package_dir)
        todo += _file_references(file, name, package_dir)
    files = {_module_file(name, package_dir) for name in seen}
    for folder in {f.parent for f in files}:
        for data in DATA_FOLDERS:
            files |= {f for f in (folder / data).rglob("*") if f.is_file()}
    return files


def _parse(path):
    return _parse_cached(path, path.stat().st_mtime_ns)


@functools.cache
def _parse_cached(path, mtime):  # (the mtime: a changed file is parsed again)
    return ast.parse(path.read_text(), str(path))


@functools.cache
def _file_references_cached(file, mtime, name, package_dir):
    return frozenset(_references(ast.walk(_parse(file)), name, file, package_dir))


def _file_references(file, name, package_dir):
    """_references of a whole module file (every rule's digest walks the same files)."""
    return _file_references_cached(file, file.stat().st_mtime_ns, name, Path(package_dir))


def _module_file(name, package_dir):
    """tag2mask-relative module name -> its file (module or package __init__), or None."""
    base = package_dir.joinpath(*name.split(".")) if name else package_dir
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_level(tree):
    """The nodes that run when the module is imported: everything but function bodies."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo += list(ast.iter_child_nodes(node))


def _references(nodes, module, path, package_dir):
    """Package modules that these AST nodes import or name (package-relative names)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts + ([node.module] if node.module else []))
            elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
                base = node.module[len(PACKAGE) + 1:]
            else:
                continue
            candidates = [base] + [f"{base}.{a.name}".lstrip(".") for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name[len(PACKAGE) + 1:] for a in node.names
                          if a.name.startswith(PACKAGE + ".")]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.startswith(PACKAGE + ".")):
            candidates = [node.value[len(PACKAGE) + 1:]]
        else:
            continue
        found |= {c for c in candidates if c and _module_file(c, package_dir) is not None}
    return found
