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

# Stage commands run the package from this checkout, with the interpreter that runs
# Snakemake (or the env's python under --sdm conda), so the code that runs is the code here.
_CONDA = any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method)
TAG2MASK = (
    f'PYTHONPATH="{workflow.basedir}/workflow" '
    f'{"python" if _CONDA else json.dumps(sys.executable)} -m tag2mask.cli'
)

# A config section as JSON, passed to a stage as a param: changing it reruns that stage.
options = lambda section: json.dumps(config[section], sort_keys=True)
