"""The ways to make pseudo masks (config `pseudo_masks.method`): plug-ins behind one registry.

A method is a `Method`: its name, the files of the run it reads (`inputs`, paths relative to
results/<run>/, made by other stages), and a module with the function

    make_shard(inputs, manifest, options, shard, num_shards, out, panels, progress)

that writes one shard of the pseudo-mask store (kind "pseudo_masks", docs/formats.md) for the
manifest's training images: `inputs` maps the input names to paths, `options` are the keys of
the method's config section (its name) that the schema gives its `make` action, `panels` is a
folder for pictures (or None). The workflow's one rule for every method (rules/pseudo_masks.smk,
`tag2mask pseudo_masks make --method NAME`) takes the inputs the method names, so a new method
needs no rule of its own; the stages that make its inputs do (IRNet's training, for example).

Built in: `retrieval` (tag2mask.retrieval.method), `irnet` (tag2mask.irnet.method) and `sam`
(tag2mask.sam.prompts: the peaks as Segment Anything's point prompts). Others
come from installed packages through the entry-point group `tag2mask.pseudo_mask_methods`,
each entry a `Method` that also carries the JSON schema of its config section (`schema`; its
keys' `x-read-by` name `make`). Nothing here imports a method's module: the workflow reads the
registry when it parses, the command imports the one method it runs.
"""

import functools
import importlib
from dataclasses import dataclass, field
from importlib import metadata

ENTRY_POINTS = "tag2mask.pseudo_mask_methods"


@dataclass(frozen=True)
class Method:
    name: str                    # the value of pseudo_masks.method
    module: str                  # the module with make_shard (relative: of this package)
    inputs: dict = field(default_factory=dict)  # input name -> path relative to results/<run>/
    schema: dict = None          # a plug-in's config section schema (built-ins: core/schema.yaml)

    @property
    def section(self):
        """The config section of its options: its name."""
        return self.name

    def load(self):
        """The method's module (imported now)."""
        return importlib.import_module(self.module, package="tag2mask")


# Package-relative module names: a method's code is a rerun trigger of its own rule only
# (rules/pseudo_masks.smk), not of every stage that reads this registry through the config
# (core/code_digest.py follows constants that name a module in full).
BUILTIN = (
    Method("retrieval", ".retrieval.method",
           {"peaks": "peaks/peaks.h5", "proposals": "proposals/proposals.h5"}),
    Method("irnet", ".irnet.method",
           {"model": "irnet/irnet.pt", "cams": "cams/cams.h5"}),
    Method("sam", ".sam.prompts", {"peaks": "peaks/peaks.h5"}),
)


@functools.cache
def registered_methods():
    """{name: Method}: the built-in methods and those of installed plug-ins."""
    methods = {m.name: m for m in BUILTIN}
    for entry in metadata.entry_points(group=ENTRY_POINTS):
        method = entry.load()
        if not isinstance(method, Method) or method.name != entry.name:
            raise TypeError(f"entry point {entry.name} = {entry.value} of group {ENTRY_POINTS} "
                            "must be a tag2mask.core.methods.Method of that name")
        if method.name in methods:
            raise ValueError(f"pseudo-mask method {method.name!r} is registered twice "
                             f"(entry point {entry.value})")
        methods[method.name] = method
    return methods


def get_method(name):
    methods = registered_methods()
    if name not in methods:
        raise KeyError(f"no pseudo-mask method {name!r}; known: {', '.join(sorted(methods))}")
    return methods[name]
