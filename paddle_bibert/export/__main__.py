"""``python -m paddle_bibert.export SAVED_BINARIZED_DIR OUT.bibert``

Reload a model written by ``paddle_bibert.save_binarized`` and write its packed file.
"""

import argparse
import os
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m paddle_bibert.export",
                                 description="Export a saved BiBERT model as a bit-packed file")
    ap.add_argument("model_dir", help="directory written by paddle_bibert.save_binarized")
    ap.add_argument("out", help="output file, e.g. model.bibert")
    args = ap.parse_args(argv)

    from ..surgery import load_binarized
    from .cost import BertShape, count
    from .exporter import export_packed

    try:
        model = load_binarized(args.model_dir)
        model.eval()
        info = export_packed(model, args.out)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    fp = count(BertShape.from_config(info["config"]))["fp_bytes"]
    print(f"wrote {args.out}: {info['bytes'] / 2**20:.2f} MiB "
          f"({fp / info['bytes']:.1f}x smaller than float32 weights, {fp / 2**20:.1f} MiB); "
          f"recipe={info['config']['binarize'].get('method')}, "
          f"attention={info['config']['attention']}, format version {info['version']}")
    ckpt = [f for f in os.listdir(args.model_dir) if f.endswith((".pdparams", ".safetensors"))]
    if ckpt:
        size = sum(os.path.getsize(os.path.join(args.model_dir, f)) for f in ckpt)
        print(f"  saved checkpoint on disk: {size / 2**20:.1f} MiB ({size / info['bytes']:.1f}x)")


if __name__ == "__main__":
    main()
