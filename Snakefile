# tag2mask: instance segmentation from image-level labels, as a Snakemake workflow.
#   snakemake --cores 2                                 # the synthetic demo (config/config.yaml)
#   snakemake --cores 8 --configfile config/voc.yaml    # another dataset
# Every rule calls one `tag2mask` subcommand with explicit files; see README.md.

import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


# The package's check: renamed keys moved (with a warning), the config validated against the
# schema (the error is one line naming the key) and completed with its defaults.
sys.path.insert(0, f"{workflow.basedir}/workflow")  # the package, even when not pip-installed
from tag2mask.core.config import check_config_paths, complete_config  # noqa: E402
from tag2mask.core.errors import InputError  # noqa: E402

try:
    _complete = complete_config(config, where="workflow config")
    # Dataset roots, annotation files, image folders, weights files: a wrong path stops the
    # workflow here (snakemake -n too), naming the config key; relative to the working
    # directory.
    check_config_paths(_complete, where="workflow config")
except InputError as e:
    raise WorkflowError(str(e)) from None
config.clear()
config.update(_complete)


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


rule all:
    default_target: True
    input:
        lambda w: all_targets(),
