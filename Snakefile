# tag2mask: instance segmentation from image-level labels, as a Snakemake workflow.
#   snakemake --cores 2                                 # the synthetic demo (config/config.yaml)
#   snakemake --cores 8 --configfile config/voc.yaml    # another dataset
# Every rule calls one `tag2mask` subcommand with explicit files; see README.md.

import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


# The package's check first: its error is one line naming the key (snakemake's validate
# prints the whole schema with it); snakemake's validate then fills in the defaults.
sys.path.insert(0, f"{workflow.basedir}/workflow")  # the package, even when not pip-installed
from tag2mask.core.config import check_config_paths, validate_config  # noqa: E402
from tag2mask.core.errors import InputError  # noqa: E402

try:
    validate_config(config, where="workflow config")
except InputError as e:
    raise WorkflowError(str(e)) from None
validate(config, "config/schema.yaml")
# Dataset roots, annotation files, image folders, weights files: a wrong path stops the
# workflow here (snakemake -n too), naming the config key; relative to the working directory.
try:
    check_config_paths(config, where="workflow config")
except InputError as e:
    raise WorkflowError(str(e)) from None


include: "rules/common.smk"
include: "rules/dataset.smk"
include: "rules/classifier.smk"
include: "rules/peaks.smk"
include: "rules/proposals.smk"
include: "rules/retrieval.smk"
include: "rules/irnet.smk"
include: "rules/verification.smk"
include: "rules/maskrcnn.smk"
include: "rules/upper_bound.smk"
include: "rules/self_training.smk"
include: "rules/evaluation.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        MANIFEST,
        f"{RUN}/classifier/classifier.pt",
        PROPOSALS_TARGET if PSEUDO_MASKS_METHOD == "retrieval" else [],
        PEAKS_TARGET,
        PSEUDO_MASKS,
        [f"{RUN}/pseudo_masks/evaluation.json"] if HAS_GT else [],
        MASKRCNN_TARGET,
        REPORT_TARGET,
        PREDICT_TARGET,  # masks for new images: only with --config predict_images=DIR
