# What the rule files share (run paths, shards, splits with ground truth, the stores that pass
# between stages) and the helpers that build a rule's params, log, benchmark, resources and
# command; every rule runs one `tag2mask <stage> <action>` (README, "Where each stage lives").
# Nothing here changes after this file is read, and no rule file changes another's names. Each
# says what its stage adds to the run (<STAGE>_TARGETS, _REPORT_INPUTS, _TRAINING_STORES), and
# the functions at the end join them.

import json
import os
import sys

sys.path.insert(0, f"{workflow.basedir}/workflow")  # the package, even when not pip-installed
from tag2mask.core.code_digest import code_digest, module_digest  # noqa: E402
from tag2mask.core.options import RUNTIME_ENV, action_options_json, runtime_options  # noqa: E402
from tag2mask.core.methods import get_method  # noqa: E402
from tag2mask.report.provenance import RUN_ENV, run_record  # noqa: E402

RUN = f"results/{config['run_name']}"
DATA = f"{RUN}/dataset"
MANIFEST = f"{DATA}/manifest.json"
SHARDS = list(range(config["shards"]))
DATASET = config["dataset"]
HAS_GT = DATASET["kind"] != "tags"
_NO_VAL = (
    (DATASET["kind"] == "synthetic" and DATASET["synthetic"]["val_images"] == 0)
    or (DATASET["kind"] == "voc" and DATASET["voc"]["val_split"] is None)
    or (DATASET["kind"] == "coco" and DATASET["coco"]["val_annotations"] is None)
    or (DATASET["kind"] == "tags" and DATASET["tags"]["val_fraction"] == 0)
)
SPLITS = ["train"] if _NO_VAL else ["train", "val"]
GT_SPLITS = SPLITS if HAS_GT else []
# Mask R-CNN models are predicted and evaluated on val, or on train without a val split
EVAL_SPLIT = "val" if "val" in SPLITS else "train"
UPPER_BOUND = bool(config["upper_bound"]) and HAS_GT
if not HAS_GT:
    print("tag2mask: dataset kind 'tags' has no ground truth: evaluation stages are skipped"
          + (" (and upper_bound)" if config["upper_bound"] else ""), file=sys.stderr)
ROUNDS = list(range(1, config["self_training"]["rounds"] + 1))
# the Mask R-CNN models of a run, each a folder of the run (rules/maskrcnn.smk)
MODELS = r"maskrcnn|upper_bound|self_training/round_[1-9][0-9]*"

# the stores that pass between stages
CLASSIFIER = f"{RUN}/classifier/classifier.pt"
PEAKS_STORE = f"{RUN}/peaks/peaks.h5"
PROPOSALS_STORE = f"{RUN}/proposals/proposals.h5"
PSEUDO_MASKS = f"{RUN}/pseudo_masks/pseudo_masks.h5"
# How the pseudo masks are made: a plug-in (tag2mask.core.methods) naming the files of
# the run it reads; the stages that make them join the run through those inputs only.
PSEUDO_MASK_METHOD = get_method(config["pseudo_masks"]["method"])
PSEUDO_MASK_INPUTS = {name: f"{RUN}/{path}" for name, path in PSEUDO_MASK_METHOD.inputs.items()}
# With verification on, the method's shards go to pseudo_masks/unverified/ and the verify rule
# rescores them into pseudo_masks/shards/; with it off they go to the gather as they are.
VERIFIED = config["verification"]["enabled"]
METHOD_SHARD = f"{RUN}/pseudo_masks/{'unverified' if VERIFIED else 'shards'}/{{shard}}.h5"


def shard_store(path):
    """A sharded stage's output store: temp() (deleted once gathered) unless keep_shards."""
    return path if config["keep_shards"] else temp(path)


# Stage commands run the package from this checkout ("$TAG2MASK_PYTHON" -m tag2mask.cli), with
# the interpreter that runs Snakemake (or the env's python under --sdm conda), so the code that
# runs is the code here. The options that say how to run, not what to compute (x-rerun: false
# in the schema: devices, worker processes, chunk sizes), go the same way. Environment, not
# params: moving the checkout or the venv, or running on another device, is no reason to rerun
# anything (params are rerun triggers); jobs inherit it, on SLURM too.
_CONDA = any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method)
os.environ.update({
    "PYTHONPATH": os.pathsep.join(
        p for p in (f"{workflow.basedir}/workflow", os.environ.get("PYTHONPATH")) if p),
    "TAG2MASK_PYTHON": "python" if _CONDA else sys.executable,
    RUNTIME_ENV: json.dumps(runtime_options(config), sort_keys=True),
    # what the report says produced the run (tag2mask/report/provenance.py)
    RUN_ENV: run_record(config, PRESET, sys.argv),
})


def action_params(command, section=None):
    """The rerun triggers (params) of the job running `tag2mask <command>` ("stage action"):
    `options`, the keys of config `section` (default: the stage's) that the schema says the
    action reads (core.options), as JSON, also the command's --config; and `code`, the digest
    of the code the action runs (core/code_digest.py)."""
    stage, action = command.split()
    section = section or stage
    return {"options": action_options_json(config[section], section, action),
            "code": code_digest(f"{stage}.cli:run_{action.replace('-', '_')}")}


def log_file(rule_name):
    return f"{RUN}/logs/{rule_name}.log"


def benchmark_file(rule_name):
    return f"{RUN}/benchmarks/{rule_name}.tsv"


ENV = "../envs/tag2mask.yaml"


def job_resources(mem_mb, minutes, **more):
    """mem_mb and runtime (minutes) of a job, doubled on each retry (a job killed for memory
    or time gets twice as much on its next attempt)."""
    return {"mem_mb": lambda wc, attempt: mem_mb * attempt,
            "runtime": lambda wc, attempt: minutes * attempt, **more}


def tag2mask(arguments):
    """The shell command of a rule: `tag2mask ARGUMENTS`, its output into the rule's log."""
    return f'"$TAG2MASK_PYTHON" -m tag2mask.cli {arguments} > {{log:q}} 2>&1'


# Training on several processes (classifier, maskrcnn, irnet `processes`, default 1): the
# training rules pass `--processes N`, and with N > 1 the command runs itself under torchrun
# (core/launch.py, core/distributed.py). N comes from a resource, not a param: batch_size is
# the batch over all processes, so changing N reruns nothing. Unless the device is cpu, the
# rule asks for N GPUs (the `gpu` resource, sbatch --gpus=N with the SLURM profile).
training_processes = lambda section: config[section]["processes"]
training_gpus = lambda section: (
    0 if config[section]["device"] == "cpu" else training_processes(section)
)
for _section in ("classifier", "maskrcnn", "irnet"):
    if config[_section]["batch_size"] % config[_section]["processes"]:
        raise WorkflowError(
            f"workflow config: {_section}.batch_size {config[_section]['batch_size']} is not "
            f"a multiple of {_section}.processes {config[_section]['processes']}: batch_size "
            "is the batch of one step over all processes, each takes an equal part"
        )
# a gpu resource for the per-image jobs of a section whose device is cuda
one_gpu = lambda section: int(config[section].get("device") == "cuda")

# What the rule files say the run makes, joined. Called only by input functions, once every
# rule file is read, so the order of the includes does not matter.


def training_stores():
    """Mask R-CNN model folder -> the store it trains on (rules/maskrcnn.smk)."""
    return {**MASKRCNN_TRAINING_STORES, **UPPER_BOUND_TRAINING_STORES,
            **SELF_TRAINING_TRAINING_STORES}


def report_inputs():
    """Report input name -> file (rules/report.smk)."""
    return {**DATASET_REPORT_INPUTS, **CLASSIFIER_REPORT_INPUTS, **PEAKS_REPORT_INPUTS,
            **PROPOSALS_REPORT_INPUTS, **PSEUDO_MASKS_REPORT_INPUTS, **EVALUATION_REPORT_INPUTS,
            **MASKRCNN_REPORT_INPUTS, **UPPER_BOUND_REPORT_INPUTS, **SELF_TRAINING_REPORT_INPUTS}


def all_targets():
    """What `snakemake` with no target makes (the Snakefile's rule all)."""
    return [*DATASET_TARGETS, *CLASSIFIER_TARGETS, *PEAKS_TARGETS, *PROPOSALS_TARGETS,
            *PSEUDO_MASKS_TARGETS, *EVALUATION_TARGETS, *MASKRCNN_TARGETS, *REPORT_TARGETS]
