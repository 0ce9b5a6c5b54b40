"""``python -m paddle_bibert.export SAVED_BINARIZED_DIR OUT.bibert``

Reload a model written by ``paddle_bibert.save_binarized`` (e.g. a run's ``best_model``) and
write its packed file. The folder's tokenizer (``vocab.txt``) and task file (written by the
training commands) go into the file too, so the runtime takes text
(``python -m paddle_bibert.runtime predict OUT.bibert "a gripping film"``).
"""

import argparse
import os
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m paddle_bibert.export",
                                 description="Export a saved BiBERT model as a bit-packed file")
    ap.add_argument("model_dir", help="directory written by paddle_bibert.save_binarized")
    ap.add_argument("out", help="output file, e.g. model.bibert")
    ap.add_argument("--task", help="GLUE task (default: the folder's task file)")
    ap.add_argument("--max_seq_length", type=int,
                    help="longest input in tokens (default: the length it was trained with)")
    ap.add_argument("--labels", help="label names, comma-separated, e.g. negative,positive "
                                     "(default: the task's)")
    ap.add_argument("--ids_only", action="store_true",
                    help="store no tokenizer (a format version 1/2 file that takes token ids)")
    args = ap.parse_args(argv)

    from ..data.glue import read_task_file
    from .cost import BertShape, count
    from .exporter import export_packed

    text = {}
    has_vocab = os.path.isfile(os.path.join(args.model_dir, "vocab.txt"))
    if not args.ids_only and has_vocab:
        saved = read_task_file(args.model_dir) if os.path.isdir(args.model_dir) else {}
        text = {"task": args.task or saved.get("task"),
                "max_seq_length": args.max_seq_length or saved.get("max_seq_length"),
                "labels": args.labels.split(",") if args.labels else None}
    try:
        from ..convert import load_tokenizer
        from ..surgery import load_binarized

        model = load_binarized(args.model_dir)
        model.eval()
        tokenizer = load_tokenizer(args.model_dir) if text else None
        info = export_packed(model, args.out, tokenizer=tokenizer, **text)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    # the float32 model's size with all its position rows (the file keeps max_seq_length of them)
    positions = model.bert.embeddings.position_embeddings.weight.shape[0]
    fp = count(BertShape.from_config({**info["config"],
                                      "max_position_embeddings": positions}))["fp_bytes"]
    print(f"wrote {args.out}: {info['bytes'] / 2**20:.2f} MiB "
          f"({fp / info['bytes']:.1f}x smaller than float32 weights, {fp / 2**20:.1f} MiB); "
          f"recipe={info['config']['binarize'].get('recipe')}, "
          f"attention={info['config']['attention']}, format version {info['version']}")
    task = info["config"].get("task")
    if not has_vocab and not args.ids_only:
        print(f"  no vocab.txt in {args.model_dir}: the file takes token ids, not text (save "
              "the model with its tokenizer to store it)")
    if task:
        kind = "scores" if task["labels"] is None else f"labels {task['labels']}"
        print(f"  text in: task {task['name'] or '(none)'}, {kind}, max_seq_length "
              f"{info['config']['tokenizer']['max_seq_length']}")
    ckpt = [f for f in os.listdir(args.model_dir) if f.endswith((".pdparams", ".safetensors"))]
    if ckpt:
        size = sum(os.path.getsize(os.path.join(args.model_dir, f)) for f in ckpt)
        print(f"  saved checkpoint on disk: {size / 2**20:.1f} MiB ({size / info['bytes']:.1f}x)")


if __name__ == "__main__":
    main()
