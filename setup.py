"""paddle-bibert: fully binarized BERT for PaddlePaddle / PaddleNLP.

Paddle itself is not in install_requires: `paddlepaddle` (CPU) and `paddlepaddle-gpu` conflict,
so the user installs the one for their machine (see README, requirements-cpu.txt).
"""

import glob
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

# Bitwise kernels of the packed runtime (paddle_bibert/runtime/csrc/, one extension module).
# Optional: if they cannot be built (no C compiler) the install goes on and the runtime uses its
# numpy backend (paddle_bibert.runtime reports which one as `backend`).
CSRC = "paddle_bibert/runtime/csrc"
KERNELS = Extension("paddle_bibert.runtime._kernels", sorted(glob.glob(f"{CSRC}/*.c")),
                    depends=sorted(glob.glob(f"{CSRC}/*.h")),
                    extra_compile_args=["-O3", "-std=gnu11", "-ffp-contract=off", "-pthread",
                                        "-fvisibility=hidden"],
                    extra_link_args=["-pthread"])


class OptionalBuildExt(build_ext):
    """Build the kernels if possible; never fail the install because of them."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as err:  # compiler missing or unusable
            print(f"warning: could not build {ext.name} ({err}); the packed runtime will use "
                  "its (slower) numpy backend", file=sys.stderr)


setup(
    name="paddle-bibert",
    version="0.1.0",
    description="Fully binarized BERT (BiBERT: 1-bit weights, embeddings, activations) for PaddleNLP",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["paddle_bibert", "paddle_bibert.*"]),
    # the fused STE kernels are compiled from source on first use, also in a non-editable install
    package_data={"paddle_bibert.quant": ["_ops.cc"]},
    python_requires=">=3.8",
    install_requires=[
        "paddlenlp>=3.0.0b4",
        "numpy",
        "scipy",
        "scikit-learn",
        "pyyaml",
        "safetensors",
        "tokenizers",  # the packed runtime's text input
    ],
    # deploy: only for benchmarks/deploy.py (ONNX Runtime baselines); the runtime never needs it
    extras_require={"test": ["pytest"], "deploy": ["onnxruntime", "paddle2onnx"]},
    ext_modules=[KERNELS],
    cmdclass={"build_ext": OptionalBuildExt},
)
