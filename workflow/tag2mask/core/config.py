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


def config_paths(config):
    """(config key, path, "file" | "folder") of every file or folder the config names that
    the run reads; a key the run needs but left null has path None. Keys of other dataset
    kinds than the configured one are not the run's, and not listed."""
    dataset = config.get("dataset") or {}
    kind = dataset.get("kind", "synthetic")
    section = dataset.get(kind) or {}
    wanted = []  # (key, kind of path, required)
    if kind == "voc":
        wanted += [("root", "folder", True),
                   ("sbd_root", "folder", section.get("train_split") == "train_aug")]
    elif kind == "coco":
        has_val = section.get("val_annotations") is not None
        wanted += [("train_annotations", "file", True), ("train_images", "folder", True),
                   ("val_annotations", "file", False), ("val_images", "folder", has_val)]
    elif kind == "tags":
        wanted += [("images", "folder", True), ("labels_csv", "file", True)]
    out = [(f"dataset.{kind}.{key}", section.get(key), what) for key, what, required in wanted
           if required or section.get(key) is not None]
    for name in ("classifier", "maskrcnn"):
        path = (config.get(name) or {}).get("pretrained_path")
        if path is not None:
            out.append((f"{name}.pretrained_path", path, "file"))
    proposals = config.get("proposals") or {}
    if proposals.get("method") == "external":
        out.append(("proposals.external_json", proposals.get("external_json"), "file"))
    if config.get("predict_images") is not None:
        out.append(("predict_images", config["predict_images"], "folder"))
    return out


def check_config_paths(config, where="config", base=None):
    """Every file and folder the config names (`config_paths`) must exist, so a wrong path
    stops the workflow when it is parsed (`snakemake -n` too), not when the first stage
    reads it. Relative paths are relative to `base` (default: the working directory, where
    Snakemake runs the stages). The error names the config key and the path."""
    base = Path.cwd() if base is None else Path(base)
    for key, path, what in config_paths(config):
        if path is None or not str(path).strip():
            raise InputError(where, f"config key {key}: not set, and this run needs the "
                                    f"{what} it names")
        full = base / Path(str(path)).expanduser()
        if not full.exists():
            raise InputError(where, f"config key {key}: {what} {path} not found"
                                    + (f" (relative to {base})" if not Path(path).is_absolute()
                                       else ""))
        if what == "folder" and not full.is_dir():
            raise InputError(where, f"config key {key}: {path} is not a folder")
        if what == "file" and full.is_dir():
            raise InputError(where, f"config key {key}: {path} is a folder, not a file")
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
