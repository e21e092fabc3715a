"""Make the example lm-eval task runnable here: copy its YAML with the data path made absolute.

    python examples/lm_eval/prepare.py /tmp/lm_eval_task
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf \
        --model_args pretrained=MODEL_DIR,dtype=float32 --device cpu --batch_size 8 \
        --tasks oficina_pyref_section --include_path /tmp/lm_eval_task --limit 20

Rebuild the task from the demo domain with
    python -m oficina.evals.evaluate lm-eval-example examples/lm_eval
"""

import sys
from pathlib import Path

from oficina.evals.evaluate import LM_EVAL_TASK, lm_eval_task_dir

if __name__ == "__main__":
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/lm_eval_task")
    lm_eval_task_dir(dest, Path(__file__).resolve().parent)
    print(f"task '{LM_EVAL_TASK}' ready in {dest}; run:")
    print(
        "  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf "
        "--model_args pretrained=MODEL_DIR,dtype=float32 --device cpu --batch_size 8 "
        f"--tasks {LM_EVAL_TASK} --include_path {dest} --limit 20"
    )
