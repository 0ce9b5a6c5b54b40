"""BiT's multi-step distillation in one command: full precision -> W1A2 (or W1A4) -> W1A1.

    python examples/multistep_distill.py --task_name sst-2 --data_dir ../shared/data/glue \
        --teacher_path runs/sst-2/teacher --recipe bit --stages 2,1 --max_seq_length 64 \
        --batch_size 16 --learning_rate 5e-4 --num_train_epochs 3 --output_dir runs/sst-2/bit \
        --pred_distill --intermediate_distill --hidden_loss mse --gold_weight 0

Each stage's best student teaches (and initialises) the next; `summary.json` in --output_dir
lists every stage's dev metric. Rerun with --resume to continue an interrupted chain.
"""

import paddle_bibert  # noqa: F401  (sets CPU defaults before Paddle loads MKL)
from paddle_bibert.commands import multistep_distill
from paddle_bibert.distributed import main

if __name__ == "__main__":
    main(multistep_distill)
