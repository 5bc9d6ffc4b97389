"""Which config keys each action reads, derived from the schema (core/schema.yaml), the one
place that says so (its header explains the `x-` annotations).

From it come, for an action `tag2mask <section> <action>`:
- `action_options`: the keys the action reads whose change must rerun it; the Snakemake rules
  pass them as a param (their rerun trigger) and as the command's --config;
- `runtime_options`: the keys the action reads that say how to run, not what to compute
  (x-rerun: false); the workflow passes them in the environment (TAG2MASK_RUNTIME), so a change
  reruns nothing;
- `checkpoint_identity`: what a training checkpoint must share with a run to be resumed (the
  options without the x-identity: false keys such as epochs, nor the runtime keys);
- `read_options`: what a command accepts and returns (both kinds, with the schema's defaults
  for keys not given), as a dict that names the schema when code reads a key the schema does
  not give the action, so a key forgotten in the schema fails instead of running on a default.
"""

import json
import os

from .schema import _schema

RUNTIME_ENV = "TAG2MASK_RUNTIME"


def section_schema(section):
    """A section's schema (read only)."""
    schema = _schema()["properties"].get(section)
    if schema is None or schema.get("type") != "object":
        raise ValueError(f"the schema has no section {section!r}")
    return schema


def key_readers(section):
    """{key: (actions reading it, reruns, in identity)} of one section. An action of the
    section's own stage is its name; another stage's is "stage action"."""
    schema = section_schema(section)
    default = schema.get("x-read-by", [])
    return {key: (tuple(spec.get("x-read-by", default)), spec.get("x-rerun", True),
                  spec.get("x-identity", True))
            for key, spec in schema["properties"].items()}


def _unselected(section, values):
    """Subsections that the section's selector does not select (x-selector)."""
    schema = section_schema(section)
    selector = schema.get("x-selector")
    if selector is None:
        return set()
    chosen = values.get(selector, schema["properties"][selector].get("default"))
    return {k for k, spec in schema["properties"].items()
            if spec.get("type") == "object" and k != chosen}


def _keys(section, action, values, rerun):
    skip = _unselected(section, values)
    return [k for k, (actions, reruns, _) in key_readers(section).items()
            if action in actions and reruns == rerun and k not in skip]


def action_options(values, section, action):
    """The keys of `values` (a section with the schema's defaults) that `action` reads and
    whose change reruns it: the rule's param and the command's --config."""
    return {k: values[k] for k in _keys(section, action, values, rerun=True)}


def action_options_json(values, section, action):
    return json.dumps(action_options(values, section, action), sort_keys=True)


def runtime_options(config):
    """{section: {key: value}} of every x-rerun: false key of a config (with defaults)."""
    out = {}
    for section, spec in _schema()["properties"].items():
        if spec.get("type") == "object" and isinstance(config.get(section), dict):
            keys = [k for k, (_, reruns, _) in key_readers(section).items() if not reruns]
            if keys:
                out[section] = {k: config[section][k] for k in keys}
    return out


def checkpoint_identity(options, section, action):
    """The options a training checkpoint records and must match to be resumed."""
    readers = key_readers(section)
    return {k: v for k, v in options.items()
            if k in readers and action in readers[k][0] and readers[k][1] and readers[k][2]}


class ActionOptions(dict):
    """The options of one action. Reading a key the schema does not give the action is an
    error that says so (a key read by code must be declared, or its change would not rerun
    the action)."""

    def __init__(self, values, section, action):
        super().__init__(values)
        self.section, self.action = section, action

    def __missing__(self, key):
        raise KeyError(f"{self.section}.{key} is not read by action {self.action!r} according "
                       f"to the schema (core/schema.yaml: add {self.action} to its x-read-by)")


def read_options(values, section, action, runtime=None):
    """The options an action runs with: `values` (a section completed with the schema's
    defaults) cut to the keys the action reads; its runtime keys from `runtime` (a dict), else
    from the environment the workflow sets, else from `values`."""
    if runtime is None:
        runtime = json.loads(os.environ.get(RUNTIME_ENV, "{}")).get(section, {})
    wanted = _keys(section, action, values, True) + _keys(section, action, values, False)
    out = {k: values[k] for k in wanted}
    for k in _keys(section, action, values, False):
        if k in runtime:
            out[k] = runtime[k]
    return ActionOptions(out, section, action)
