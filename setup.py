"""paddle-bibert: fully binarized BERT for PaddlePaddle / PaddleNLP.

Paddle itself is not in install_requires: `paddlepaddle` (CPU) and `paddlepaddle-gpu` conflict,
so the user installs the one for their machine (see README, requirements-cpu.txt).
"""

from setuptools import find_packages, setup

setup(
    name="paddle-bibert",
    version="0.1.0",
    description="Fully binarized BERT (BiBERT: 1-bit weights, embeddings, activations) for PaddleNLP",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["paddle_bibert", "paddle_bibert.*"]),
    python_requires=">=3.8",
    install_requires=[
        "paddlenlp>=3.0.0b4",
        "numpy",
        "scipy",
        "scikit-learn",
        "pyyaml",
        "safetensors",
    ],
    extras_require={"test": ["pytest"]},
)
