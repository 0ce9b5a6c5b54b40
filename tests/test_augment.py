"""Perturbed copies of training examples (``--augment``), labelled by the teacher."""

import random

import pytest

from paddle_bibert.commands import task_distill
from paddle_bibert.data.augment import perturb, perturbed_copies
from paddle_bibert.data.glue import load_glue

from conftest import GLUE_DIR
from test_commands import Log, common, glue_slice, tiny_model_dir  # noqa: F401


def test_perturb_edits_words_and_only_with_words_of_the_corpus():
    words = ["alpha", "beta", "gamma"]
    text = "the cat sat on the mat near the door today"
    rng = random.Random(0)
    outs = [perturb(text, rng, words) for _ in range(200)]
    vocab = set(text.split()) | set(words)
    assert all(o and set(o.split()) <= vocab for o in outs)
    assert sum(o != text for o in outs) == 200  # one swap at least, always
    n = [len(o.split()) for o in outs]
    assert 7 <= sum(n) / len(n) <= 9.9  # ~10% of the 10 words deleted
    assert any(set(words) & set(o.split()) for o in outs)  # and some replaced
    assert perturb("word", random.Random(1), words) in {"word", *words}  # never empty
    assert perturb("", random.Random(1), words) == ""


def test_copies_of_pairs_perturb_each_text_keep_labels_and_repeat_by_seed():
    dev = load_glue("sts-b", GLUE_DIR, "dev")
    copies = perturbed_copies(dev, ("sentence1", "sentence2"), 3, seed=5)
    assert len(copies) == 3 * len(dev)
    for k, c in enumerate(copies):
        src = dev[k % len(dev)]
        assert c["labels"] == src["labels"] and c["sentence1"] and c["sentence2"]
        assert (c["sentence1"], c["sentence2"]) != (src["sentence1"], src["sentence2"])
    for f in ("sentence1", "sentence2"):  # each text of a pair on its own
        assert sum(c[f] != dev[k % len(dev)][f] for k, c in enumerate(copies)) >= 0.9 * len(copies)
    assert copies == perturbed_copies(dev, ("sentence1", "sentence2"), 3, seed=5)
    assert copies != perturbed_copies(dev, ("sentence1", "sentence2"), 3, seed=6)
    assert perturbed_copies(dev, ("sentence1", "sentence2"), 0, seed=5) == []
    with pytest.raises(ValueError, match="--augment must be >= 0"):
        perturbed_copies(dev, ("sentence1",), -1, seed=5)


def test_task_distill_trains_on_the_copies_and_refuses_a_gold_term(glue_slice, tiny_model_dir, tmp_path):  # noqa: F811
    from paddle_bibert.commands import run_glue

    run_glue(common(glue_slice, "sst-2", tmp_path / "t", "--model_name_or_path", tiny_model_dir, "--max_steps", "2"),
             log=Log())
    student = lambda out, *f: common(glue_slice, "sst-2", tmp_path / out, "--teacher_path", str(tmp_path / "t"),  # noqa: E731
                                     "--num_train_epochs", "1", "--bi", "--pred_distill", *f)
    plain = task_distill(student("a", "--gold_weight", "0"), log=Log())
    log = Log()
    aug = task_distill(student("b", "--gold_weight", "0", "--augment", "2"), log=log)
    assert plain["total_steps"] == 6 and aug["total_steps"] == 18  # 48 examples, 3 x 48 with the copies
    assert any("144 train" in m for m in log)
    with pytest.raises(ValueError, match="pass --gold_weight 0"):
        task_distill(student("c", "--augment", "2"), log=Log())
    with pytest.raises(ValueError, match="--augment must be >= 0"):
        task_distill(student("d", "--gold_weight", "0", "--augment", "-1"), log=Log())
