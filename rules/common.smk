# What several rule files share: run paths, shards, splits with ground truth, the stores that
# pass between stages, how stages are called, the rerun triggers, and the gather rule of the
# sharded stages. Every rule calls one `tag2mask <stage> <action>` (README: rule -> command).

import json
import os
import sys

sys.path.insert(0, f"{workflow.basedir}/workflow")  # the package, even when not pip-installed
from tag2mask.core.code_digest import code_digest  # noqa: E402

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
if not HAS_GT:
    print("tag2mask: dataset kind 'tags' has no ground truth: evaluation stages are skipped",
          file=sys.stderr)
# Mask R-CNN models are predicted and evaluated on val, or on train without a val split
EVAL_SPLIT = "val" if "val" in SPLITS else "train"

# the stores that pass between stages
PEAKS_STORE = f"{RUN}/peaks/peaks.h5"
PROPOSALS_STORE = f"{RUN}/proposals/proposals.h5"
PSEUDO_MASKS = f"{RUN}/pseudo_masks/pseudo_masks.h5"

# the upper bound (evaluation side) and the self-training rounds
UPPER_BOUND = bool(config["upper_bound"]) and HAS_GT
if config["upper_bound"] and not HAS_GT:
    print("tag2mask: upper_bound is on but the dataset has no ground truth: the upper bound "
          "is skipped", file=sys.stderr)
UB = f"{RUN}/upper_bound"
ROUNDS = list(range(1, config["self_training"]["rounds"] + 1))
ST = f"{RUN}/self_training"

# Stage commands run the package from this checkout ("$TAG2MASK_PYTHON" -m tag2mask.cli), with
# the interpreter that runs Snakemake (or the env's python under --sdm conda), so the code that
# runs is the code here. Environment, not params: moving the checkout or the venv is no reason
# to rerun anything (params are rerun triggers); jobs inherit it, on SLURM too.
_CONDA = any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method)
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (f"{workflow.basedir}/workflow", os.environ.get("PYTHONPATH")) if p
    ),
    TAG2MASK_PYTHON="python" if _CONDA else sys.executable,
)

# Rerun triggers, passed as params: a config section as JSON (changing it reruns the rules
# that take it), and the digest of the code an action runs (core/code_digest.py: the stage's
# cli.py and every module the action imports, computed from the source).
options = lambda section: json.dumps(
    {k: v for k, v in config[section].items() if k != "processes"}, sort_keys=True
)
code = lambda action: code_digest(action)

# Training on several processes (classifier, maskrcnn, irnet `processes`, default 1): the
# training rules pass `--processes N`, and with N > 1 the command runs itself under torchrun
# (`python -m torch.distributed.run --standalone --nproc-per-node N -m tag2mask.cli ...`;
# core/launch.py, core/distributed.py). N comes from a resource, not a param, and is left out
# of the options param: batch_size is the batch over all processes, so changing N reruns
# nothing. Unless the device is cpu, the rule asks for N GPUs (`gpu` resource: sbatch
# --gpus=N with the SLURM profile).
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


# How the pseudo masks are made (config pseudo_masks.method): `retrieval` (retrieval.smk, from
# peaks and proposals) or `irnet` (irnet.smk). Only that method's rule writes the shards
# METHOD_SHARD, which become pseudo_masks/shards/<i>.h5 (verified, or as they are with
# verification off) and the gather rule joins into PSEUDO_MASKS for every stage downstream;
# the other method's stages are not part of the run.
PSEUDO_MASKS_METHOD = config["pseudo_masks"]["method"]
# With verification on (rules/verification.smk) the method writes its shards to
# pseudo_masks/unverified/ and the verify rule rescores them into pseudo_masks/shards/.
VERIFICATION = config["verification"]
METHOD_SHARD = (f"{RUN}/pseudo_masks/unverified/{{shard}}.h5" if VERIFICATION["enabled"]
                else f"{RUN}/pseudo_masks/shards/{{shard}}.h5")

# The sharded stages write <folder>/shards/<i>.h5; one job joins them into <folder>/<folder>.h5
# (`tag2mask <stage> gather`): folder -> stage
GATHERED = {"peaks": "peaks", "proposals": "proposals", "cams": "irnet",
            "pseudo_masks": PSEUDO_MASKS_METHOD}


rule gather:
    input:
        lambda w: expand(f"{RUN}/{w.folder}/shards/{{shard}}.h5", shard=SHARDS),
    output:
        f"{RUN}/{{folder}}/{{folder}}.h5",
    wildcard_constraints:
        folder="|".join(GATHERED),
    params:
        stage=lambda w: GATHERED[w.folder],
        code=code("core.cli_args:_gather"),
    log:
        f"{RUN}/logs/gather_{{folder}}.log",
    benchmark:
        f"{RUN}/benchmarks/gather_{{folder}}.tsv"
    conda:
        "../envs/tag2mask.yaml"
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    shell:
        "\"$TAG2MASK_PYTHON\" -m tag2mask.cli {params.stage} gather --out {output:q} {input:q} "
        "> {log:q} 2>&1"
