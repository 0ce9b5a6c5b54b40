import os
import warnings

# Before anything imports Paddle: the same CPU defaults as the example commands the tests launch
# (on AMD, MKL_DEBUG_CPU_TYPE=5 selects another MKL code path). Without this the pytest process
# and its subprocesses could sum in different orders, and runs compared across them would differ
# in the last bits.
import paddle_bibert  # noqa: F401,E402

import numpy as np
import pytest

warnings.filterwarnings("ignore")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The first rows (64 train, 32 dev) of the GLUE files of five tasks, committed so that every test
# runs in a fresh clone; tests/data/README.md says where they come from.
GLUE_DIR = os.path.join(REPO, "tests", "data", "glue")


def tiny_bert_config(**kw):
    from paddlenlp.transformers import BertConfig

    args = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
                num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args.update(kw)
    return BertConfig(**args)


@pytest.fixture
def tiny_config():
    return tiny_bert_config()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def assert_same_packed_file(f_old, f_new, bibert_config):
    """Two packed files hold the same content. Safetensors orders the metadata keys at random,
    so the bytes may differ. Files written before the recipe had one name store it as
    ``binarize.method``; both must read back as ``bibert_config``."""
    from paddle_bibert import BinarizeConfig

    old_b, new_b = f_old.config.pop("binarize"), f_new.config.pop("binarize")
    assert BinarizeConfig.from_dict(old_b) == BinarizeConfig.from_dict(new_b) == bibert_config
    assert f_new.config == f_old.config
    # (the payload's hash follows the tensors, compared below)
    assert {k: v for k, v in f_new.metadata.items() if k not in ("config", "payload_sha256")} == \
        {k: v for k, v in f_old.metadata.items() if k not in ("config", "payload_sha256")}
    assert set(f_new.tensors) == set(f_old.tensors)
    for k, v in f_old.tensors.items():
        if k.endswith(".alpha"):  # a mean of |W|: summed in another order by another kernel
            np.testing.assert_allclose(f_new.tensors[k], v, rtol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(f_new.tensors[k], v, err_msg=k)
