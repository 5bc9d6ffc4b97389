# Shared definitions: paths, shards, which splits have ground truth, how stages are called.

import json
import os
import sys

sys.path.insert(0, f"{workflow.basedir}/workflow")  # the package, even when not pip-installed
from tag2mask.config import code_digest  # noqa: E402

RUN = f"results/{config['run_name']}"
DATA = f"{RUN}/dataset"
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

# A config section as JSON, passed to a stage as a param: changing it reruns that stage.
options = lambda section: json.dumps(config[section], sort_keys=True)
