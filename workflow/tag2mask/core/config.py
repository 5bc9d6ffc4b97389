"""Configuration: a user's config moved from renamed keys, merged over its preset, validated
against the schema (core.schema) and completed with its defaults; the options of one action;
the paths a config names; config digests."""

import copy
import hashlib
import json
import logging
from pathlib import Path

import jsonschema

from .errors import InputError
from .schema import _schema, load_yaml

log = logging.getLogger(__name__)

# Keys that moved: old dotted key -> new one. A config that still uses an old key is read as
# if it used the new one, with a warning that names both.
RENAMED = {
    "proposals.external_json": "proposals.external.json",
    **{f"proposals.{k}": f"proposals.builtin.{k}" for k in (
        "working_size", "scales", "colour_spaces", "strategies", "sigma", "min_size",
        "min_area", "coarse_downscale", "dedup_iou", "seed")},
    "retrieval.consensus_power": "retrieval.consensus.power",
    "retrieval.grid_step": "retrieval.consensus.grid_step",
    "retrieval.grid_threshold": "retrieval.consensus.grid_threshold",
    **{f"retrieval.{k}": f"retrieval.prm.{k}" for k in (
        "a", "b", "contour_width", "background_factor")},
}


def migrate(config, where="config"):
    """`config` with renamed keys (RENAMED) moved to their new place, each logged once."""
    config = copy.deepcopy(config)
    for old, new in RENAMED.items():
        section, key = old.split(".")
        values = config.get(section)
        if not isinstance(values, dict) or key not in values:
            continue
        parts = new.split(".")
        target = config
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        if parts[-1] in target:
            raise InputError(where, f"config key {old} is the old name of {new}; give only "
                                    f"{new}")
        target[parts[-1]] = values.pop(key)
        log.warning("%s: config key %s is now %s (read as such; rename it)", where, old, new)
    return config


def validate_config(config, schema_path=None, where="config"):
    """Validate against the JSON schema; the error names the offending key path."""
    schema = _schema() if schema_path is None else load_yaml(schema_path)
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
        out.append(("proposals.external.json", (proposals.get("external") or {}).get("json"),
                    "file"))
    if config.get("predict_images") is not None:
        out.append(("predict_images", config["predict_images"], "folder"))
    return out


# where the public datasets a key names are published
WHERE_TO_GET = {
    "dataset.voc.root": " (PASCAL VOC 2012, VOCtrainval_11-May-2012.tar: "
                        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)",
    "dataset.voc.sbd_root": " (SBD, benchmark.tgz: "
                            "http://home.bharathh.info/pubs/codes/SBD/download.html)",
}


def check_config_paths(config, where="config", base=None):
    """Every file and folder the config names (`config_paths`) must exist, so a wrong path
    stops the workflow when it is parsed (`snakemake -n` too), not when the first stage
    reads it. Relative paths are relative to `base` (default: the working directory, where
    Snakemake runs the stages). The error names the config key and the path."""
    base = Path.cwd() if base is None else Path(base)
    for key, path, what in config_paths(config):
        if path is None or not str(path).strip():
            raise InputError(where, f"config key {key}: not set, and this run needs the "
                                    f"{what} it names{WHERE_TO_GET.get(key, '')}")
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


def merged(base, over):
    """`over` merged into a copy of `base`, dicts key by key (as Snakemake merges configs)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def complete_config(config, where="config"):
    """A user's workflow config with renamed keys moved, merged over the preset chosen for its
    dataset (core.presets; `preset` then names it), validated, and completed with the schema's
    defaults: what the workflow runs on."""
    from .presets import choose, preset_values

    config = migrate(config, where)
    validate_config(config, where=where)  # the user's own keys first: errors name them
    name, _ = choose(config)
    config = {**merged(preset_values(name, config), config), "preset": name}
    validate_config(config, where=f"{where} over preset {name}")
    config = apply_defaults(config, _schema())
    if config["run_name"] is None:  # a run of another dataset never lands in the demo's folder
        kind = config["dataset"]["kind"]
        config["run_name"] = "demo" if kind == "synthetic" else kind
    return config


def section_options(source, section):
    """One whole config section, validated and completed with the schema's defaults.

    `source` is either inline JSON of (part of) the section (what the Snakemake rules pass) or
    a path to a workflow config YAML (for running a stage by hand)."""
    text = str(source).strip()
    if text.startswith("{"):
        try:
            options = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError("--config", f"inline options are not valid JSON ({e})") from None
        where = f"{section} options"
        options = migrate({section: options}, where)[section]
    else:
        # The whole file, not only this section (a misspelt section name would otherwise be
        # ignored), over its preset, as the workflow would run it.
        options = complete_config(load_yaml(source), source).get(section, {})
        where = source
    validate_config({section: options}, where=where)
    return apply_defaults({section: options}, _schema())[section]


def stage_options(source, section, action, runtime=None):
    """The options `tag2mask <stage> <action>` runs with: the keys of config `section` the
    schema says it reads (core.options.read_options), from --config `source`; its runtime
    keys from `runtime` (--runtime), else from the workflow's environment."""
    from .options import read_options

    return read_options(section_options(source, section), section, action, runtime)
