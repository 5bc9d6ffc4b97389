"""The workflow's config schema (schema.yaml beside this file, package data), extended by the
pseudo-mask method plug-ins (core.methods: their names, and a plug-in's own config section),
and safe YAML loading."""

import copy
import functools
from pathlib import Path

import yaml

from .errors import InputError

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.yaml"
# libyaml's loader where PyYAML was built with it (the schema is read by every command)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path):
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_LOADER) or {}
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except yaml.YAMLError as e:
        raise InputError(path, f"not valid YAML ({e})") from None


@functools.cache
def _schema():
    """The schema (read only: shared by every caller)."""
    from .methods import registered_methods

    schema = load_yaml(SCHEMA_PATH)
    method = schema["properties"]["pseudo_masks"]["properties"]["method"]
    methods = registered_methods()
    method["enum"] = sorted(methods)
    for m in methods.values():  # a plug-in outside the package brings its section's schema
        if m.schema is not None:
            schema["properties"].setdefault(m.section, m.schema)
    return schema


def load_schema():
    """The workflow's JSON schema (a copy: callers may change it)."""
    return copy.deepcopy(_schema())
