"""Distill a binarized (--bi) student from a fine-tuned teacher (BiBERT).

    python examples/task_distill.py --model_type bert --teacher_model_type bert \
        --teacher_path runs/sst-2/teacher --student_model_name_or_path runs/sst-2/teacher \
        --task_name sst-2 --data_dir ../shared/data/glue --max_seq_length 64 --batch_size 16 \
        --learning_rate 1e-4 --num_train_epochs 10 --output_dir runs/sst-2/student \
        --pred_distill --query_distill --key_distill --value_distill --intermediate_distill --bi

See `--help` and configs/<task>.yaml (`--config`).
"""

import paddle_bibert  # noqa: F401  (sets CPU defaults before Paddle loads MKL)
from paddle_bibert.commands import task_distill
from paddle_bibert.distributed import main

if __name__ == "__main__":
    main(task_distill)
