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
import hashlib
from pathlib import Path

PACKAGE = "tag2mask"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
DATA_FOLDERS = ("templates",)  # non-Python files a package runs, e.g. report/templates/


def code_digest(spec, package_dir=PACKAGE_DIR):
    """16 hex digits over the path and source of every file `spec` runs.

    spec: "stage.cli:function" (an action of a stage's cli.py) or a module name relative to
    the package ("core.store")."""
    h = hashlib.sha256()
    for path in sorted(source_files(spec, package_dir)):
        h.update(path.relative_to(package_dir).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def source_files(spec, package_dir=PACKAGE_DIR):
    """The files `spec` runs (see the module docstring)."""
    package_dir = Path(package_dir)
    module, _, function = spec.partition(":")
    path = _module_file(module, package_dir)
    if path is None:
        raise ValueError(f"code_digest: no module {PACKAGE}.{module} in {package_dir}")
    tree = ast.parse(path.read_text(), str(path))
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
        todo += _references(ast.walk(ast.parse(file.read_text(), str(file))), name, file,
                            package_dir)
    files = {_module_file(name, package_dir) for name in seen}
    for folder in {f.parent for f in files}:
        for data in DATA_FOLDERS:
            files |= {f for f in (folder / data).rglob("*") if f.is_file()}
    return files


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
