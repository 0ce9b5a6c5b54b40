"""Fine-tune the full-precision teacher on a GLUE task.

    python examples/run_glue.py --model_type bert --model_name_or_path minilm \
        --task_name sst-2 --data_dir ../shared/data/glue --max_seq_length 64 --batch_size 32 \
        --learning_rate 5e-5 --num_train_epochs 3 --output_dir runs/sst-2/teacher

See `--help` and configs/<task>.yaml (`--config`).
"""

import paddle_bibert  # noqa: F401  (sets CPU defaults before Paddle loads MKL)
from paddle_bibert.commands import run_glue
from paddle_bibert.distributed import main

if __name__ == "__main__":
    main(run_glue)
