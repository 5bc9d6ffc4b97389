"""Configuration: safe YAML loading, JSON-schema validation, config digests."""

import hashlib
import json
from pathlib import Path

import jsonschema
import yaml

from .errors import InputError

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "config" / "schema.yaml"


def load_yaml(path):
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except yaml.YAMLError as e:
        raise InputError(path, f"not valid YAML ({e})") from None


def validate_config(config, schema_path=SCHEMA_PATH, where="config"):
    """Validate against the JSON schema; the error names the offending key path."""
    schema = load_yaml(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise InputError(where, f"config key {key}: {e.message}")
    return config


def digest(obj):
    """A short stable digest of a JSON-serialisable value (config sections, params)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def apply_defaults(value, schema):
    """Fill in schema defaults for keys left out (recursively through objects)."""
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = sub["default"]
        if key in out:
            out[key] = apply_defaults(out[key], sub)
    return out


def section_options(source, section):
    """Options of one config section for a stage command.

    `source` is either inline JSON of the section (what the Snakemake rules pass, so a change
    to that section alone reruns the stage) or a path to a workflow config YAML (for running a
    stage by hand). The section is validated and completed with the schema's defaults.
    """
    text = str(source).strip()
    if text.startswith("{"):
        try:
            options = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError("--config", f"inline options are not valid JSON ({e})") from None
        where = f"{section} options"
    else:
        whole = load_yaml(source)
        # The whole file, not only this section: a misspelt section name would otherwise be
        # ignored and the stage run with the defaults.
        validate_config(whole, where=source)
        options = whole.get(section, {})
        where = source
    schema = load_yaml(SCHEMA_PATH)
    validate_config({section: options}, where=where)
    return apply_defaults({section: options}, schema)[section]
