"""Settings made for a dataset: a preset under the user's config (top-level key `preset`).

A config names its dataset and what it wants to differ; the rest comes from a preset chosen for
the data (`preset: auto`): `synthetic` for the built-in synthetic images (the demo's CPU
settings, Mask R-CNN at the images' own size), `photos` for the other kinds (photographs on a
CPU). `none` leaves the schema's defaults (the papers' settings, for a GPU). The presets are
YAML files in tag2mask/presets/; the user's keys win over them.
"""

from pathlib import Path

from .schema import load_yaml

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
NAMES = ("synthetic", "photos", "none")


def choose(config):
    """(preset name, why) for a user's config."""
    asked = config.get("preset", "auto")
    kind = (config.get("dataset") or {}).get("kind", "synthetic")
    if asked != "auto":
        return asked, "named by the config's `preset`"
    if kind == "synthetic":
        return "synthetic", "preset auto, dataset kind synthetic (small generated images)"
    return "photos", f"preset auto, dataset kind {kind} (photographs)"


def preset_values(name, config):
    """The settings of preset `name` for the user's `config`."""
    if name == "none":
        return {}
    values = load_yaml(PRESETS_DIR / f"{name}.yaml")
    if name == "synthetic":  # Mask R-CNN at the images' own size, anchors from 1/16 of it
        synthetic = (config.get("dataset") or {}).get("synthetic") or {}
        size = int(synthetic.get("image_size", 128))
        values["maskrcnn"].update(min_size=[size], max_size=size,
                                  anchor_sizes=[max(2, round(size / 2 ** k))
                                                for k in (4, 3, 2, 1, 0)])
    return values
