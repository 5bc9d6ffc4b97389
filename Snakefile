# tag2mask: instance segmentation from image-level labels, as a Snakemake workflow.
#   snakemake --cores 2                                 # the synthetic demo (config/config.yaml)
#   snakemake --cores 8 --configfile my.yaml            # your dataset (config/*.yaml: examples)
# Every rule calls one `tag2mask` subcommand with explicit files; see README.md.

import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")


# The user's config: the --configfile files (and --config values), or without a config file
# the embedded default, the synthetic demo (config/config.yaml). The package merges it over
# the preset made for its dataset (tag2mask.core.presets), moves renamed keys (with a
# warning), validates it against the schema (the error is one line naming the key) and fills
# in the defaults.
sys.path.insert(0, f"{workflow.basedir}/workflow")  # the package, even when not pip-installed
from tag2mask.core.config import check_config_paths, complete_config, merged  # noqa: E402
from tag2mask.core.schema import load_yaml  # noqa: E402
from tag2mask.core.errors import InputError  # noqa: E402
from tag2mask.core.presets import choose  # noqa: E402

_given = dict(config)
if not workflow.config_settings.configfiles:
    _given = merged(load_yaml(f"{workflow.basedir}/config/config.yaml"), _given)
PRESET = "preset {} ({})".format(*choose(_given))
try:
    _complete = complete_config(_given, where="workflow config")
    # Dataset roots, annotation files, image folders, weights files: a wrong path stops the
    # workflow here (snakemake -n too), naming the config key; relative to the working
    # directory.
    check_config_paths(_complete, where="workflow config")
except InputError as e:
    raise WorkflowError(str(e)) from None
config.clear()
config.update(_complete)
print(f"tag2mask: settings: {PRESET}", file=sys.stderr)


# Each rule file after common.smk is one stage (gather.smk: the gather rule they share); their
# order does not matter (common.smk's functions join what they say the run makes).
include: "rules/common.smk"
include: "rules/gather.smk"
include: "rules/dataset.smk"
include: "rules/classifier.smk"
include: "rules/peaks.smk"
include: "rules/proposals.smk"
include: "rules/irnet.smk"
include: "rules/pseudo_masks.smk"
include: "rules/verification.smk"
include: "rules/maskrcnn.smk"
include: "rules/upper_bound.smk"
include: "rules/self_training.smk"
include: "rules/evaluation.smk"
include: "rules/report.smk"

# Small jobs run where Snakemake runs, not through the cluster's queue (SLURM profile): the
# gathers stream shard stores into one, the report and the COCO export read summaries.
localrules: all, gather, report, export_pseudo_masks


rule all:
    default_target: True
    input:
        lambda w: all_targets(),
