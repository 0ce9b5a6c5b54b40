"""Text in, label out: the vocabulary in the packed file (format version 3), its tokenizer
against PaddleNLP's, ``predict`` / ``predict_proba`` / ``scores`` against the Paddle model, the
``python -m paddle_bibert.runtime`` commands and their errors, and files of versions 1 and 2."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import paddle
import pytest

from paddle_bibert import BinarizeConfig, binarize_model, export_packed, save_binarized
from paddle_bibert.data.glue import get_task, load_glue
from paddle_bibert.data.loader import encode_examples
from paddle_bibert.data.metrics import compute_metrics
from paddle_bibert.export import PackedFormatError, read_packed, write_packed
from paddle_bibert.quant.quantizers import ElasticSign
from paddle_bibert.runtime import load_packed
from paddle_bibert.runtime.text import TextEncoder

from conftest import GLUE_DIR, REPO, assert_same_packed_file, tiny_bert_config
from test_surgery import make_model

TASKS = ["cola", "sst-2", "mrpc", "sts-b", "rte"]
#: strings where tokenizers disagree if they normalise differently
TRICKY = ["Héllo, WORLD!!  It's   a café-bar.", "naïve Ærøskøbing", "中文字符 mixed 日本語",
          "tabs\tand\u00a0nbsp\u200b zero-width", "[SEP] stays [CLS] whole [MASK]",
          "x" * 120 + " long word", "emoji 🎬 film", "ﬁne ligature", "", "   "]


@pytest.fixture(scope="module")
def paddle_tokenizer():
    from paddlenlp.transformers import BertTokenizer

    from paddle_bibert.convert import packaged_minilm_path

    return BertTokenizer(os.path.join(packaged_minilm_path(), "vocab.txt"))


def encoder_of(tok, task="sst-2", max_len=128):
    index = tok.get_vocab()
    cfg = {k: getattr(tok, k) for k in ("unk_token", "cls_token", "sep_token", "pad_token",
                                         "mask_token")}
    cfg.update(do_lower_case=True, max_seq_length=max_len)
    info = get_task(task)
    return TextEncoder(sorted(index, key=index.get), cfg,
                       {"pair": info.is_pair, "labels": info.labels})


@pytest.mark.parametrize("max_len", [128, 12])
@pytest.mark.parametrize("task", TASKS)
def test_tokenizer_gives_paddlenlps_ids_on_the_shipped_data(paddle_tokenizer, task, max_len):
    """Same ids and token types as the training pipeline (PaddleNLP's BertTokenizer through
    encode_examples), on every train and dev row shipped for the task; at 12 tokens nearly every
    input is cut, pairs longest-first."""
    info = get_task(task)
    examples = load_glue(task, GLUE_DIR, "train") + load_glue(task, GLUE_DIR, "dev")
    want = encode_examples(examples, paddle_tokenizer, task, max_len)
    texts = [(e["sentence1"], e["sentence2"]) if info.is_pair else e["sentence"]
             for e in examples]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, types = encoder_of(paddle_tokenizer, task, max_len).encode(texts)
    assert ids == [w["input_ids"] for w in want]
    assert types == [w["token_type_ids"] for w in want]
    # the warning counts the inputs that were cut
    full = encode_examples(examples, paddle_tokenizer, task, 512)
    cut = sum(len(f["input_ids"]) > max_len for f in full)
    assert cut > 0 if max_len == 12 else True
    assert [str(w.message).split(" of ")[0] for w in caught] == ([str(cut)] if cut else [])


def test_tokenizer_agrees_on_accents_cjk_specials_and_long_words(paddle_tokenizer):
    enc = encoder_of(paddle_tokenizer)
    ids, _ = enc.encode(TRICKY)
    want = encode_examples([{"sentence": t} for t in TRICKY], paddle_tokenizer, "sst-2", 128)
    assert ids == [w["input_ids"] for w in want]
    assert ids[4].count(paddle_tokenizer.sep_token_id) == 2  # the literal [SEP] is one token


#: Blocks of every character here agree one by one: ASCII, Latin-1, Latin extended, IPA,
#: Greek, Cyrillic, Armenian, Hebrew; punctuation, symbols, arrows, math, boxes, dingbats;
#: CJK punctuation and kana; 512 CJK ideographs; full-width forms; emoji.
BLOCKS = [(0, 0x600), (0x2000, 0x2E00), (0x3000, 0x3100), (0x4E00, 0x5000), (0xFF00, 0xFFF0),
          (0x1F300, 0x1F600)]


def test_tokenizer_agrees_character_by_character(paddle_tokenizer):
    """Each character inside a word, between words and doubled: control characters deleted,
    symbols and punctuation split off, CJK isolated, accents stripped, cased letters lowered."""
    cps = [c for a, b in BLOCKS for c in range(a, b)]
    texts = [f"a{chr(c)}B {chr(c)}x{chr(c)}{chr(c)} ab" for c in cps]
    got = encoder_of(paddle_tokenizer, max_len=512).encode(texts)[0]
    bad = [hex(c) for c, g, t in zip(cps, got, texts) if g != paddle_tokenizer(t)["input_ids"]]
    assert bad == []


# ------------------------------------------------------------------ files with a tokenizer

def tiny_text_model(num_labels=2, recipe="bibert", seed=3):
    """A tiny binarized BERT over MiniLM's 30,522-token vocabulary (so real text runs)."""
    paddle.seed(seed)
    from paddlenlp.transformers import BertForSequenceClassification
    model = BertForSequenceClassification(tiny_bert_config(
        vocab_size=30522, hidden_size=32, intermediate_size=64, num_labels=num_labels,
        max_position_embeddings=64))
    rng = np.random.default_rng(seed)
    model.set_state_dict({k: (rng.standard_normal(v.shape) * (0.5 if v.ndim > 1 else 0.1)
                              + (1.0 if "norm" in k and k.endswith("weight") else 0.0)
                              ).astype("float32") for k, v in model.state_dict().items()})
    binarize_model(model, BinarizeConfig.from_recipe(recipe))
    model.eval()
    return model


def paddle_logits(model, tok, texts, max_len):
    pair = isinstance(texts[0], tuple)
    enc = tok([t[0] for t in texts] if pair else texts, [t[1] for t in texts] if pair else None,
              max_length=max_len, truncation="longest_first", padding=True)
    with paddle.no_grad():
        return model(paddle.to_tensor(enc["input_ids"]),
                     token_type_ids=paddle.to_tensor(enc["token_type_ids"])).numpy()


@pytest.mark.parametrize("task", ["sst-2", "mrpc", "sts-b"])
def test_version_3_round_trip_and_predict_on_text(tmp_path, paddle_tokenizer, task):
    info = get_task(task)
    model = tiny_text_model(info.num_labels)
    path = str(tmp_path / "m.bibert")
    meta = export_packed(model, path, tokenizer=paddle_tokenizer, task=task, max_seq_length=40)
    f = read_packed(path)
    assert meta["version"] == 3 and f.metadata["format_version"] == "3"
    assert f.config["task"] == {"name": task, "pair": info.is_pair,
                                "labels": list(info.labels) if info.labels else None}
    assert f.config["tokenizer"]["max_seq_length"] == 40
    # the file keeps the 40 position rows inputs can reach; longer token ids are refused
    assert f.tensors["embeddings.position"].shape == (40, 32)
    assert f.config["max_position_embeddings"] == 40
    with pytest.raises(ValueError, match="seq_len 41 exceeds max_position_embeddings 40"):
        load_packed(path)(np.ones((1, 41), np.int64))
    assert f.config["tokenizer"]["do_lower_case"] is True
    vocab = f.tensors["tokenizer.vocab"].tobytes().decode().split("\n")
    assert vocab == sorted(paddle_tokenizer.get_vocab(), key=paddle_tokenizer.get_vocab().get)

    examples = load_glue(task, GLUE_DIR, "dev")[:9]
    texts = [(e["sentence1"], e["sentence2"]) if info.is_pair else e["sentence"]
             for e in examples]
    runtime = load_packed(path)
    want = paddle_logits(model, paddle_tokenizer, texts, 40)
    got = runtime.scores(texts, batch_size=4)  # batches of similar length, back in input order
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
    pred = runtime.predict(texts)
    if info.is_regression:
        assert runtime.labels is None
        np.testing.assert_allclose(pred, got[:, 0], rtol=1e-5)  # other batches: other widths
        with pytest.raises(ValueError, match="regression model has no class probabilities"):
            runtime.predict_proba(texts)
    else:
        assert pred == [info.labels[i] for i in want.argmax(1)]
        p = runtime.predict_proba(texts)
        e = np.exp(want.astype(np.float64) - want.max(1, keepdims=True))
        np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), atol=1e-4)


def test_label_names_and_length_default(tmp_path, paddle_tokenizer):
    model = tiny_text_model()
    path = str(tmp_path / "m.bibert")
    export_packed(model, path, tokenizer=paddle_tokenizer, labels=["negative", "positive"])
    runtime = load_packed(path)
    assert runtime.labels == ["negative", "positive"]
    assert runtime.config["task"]["name"] is None
    # the tokenizer's 512 is cut to the model's 64 positions
    assert runtime.config["tokenizer"]["max_seq_length"] == 64
    assert set(runtime.predict(["a gripping film", "dull"])) <= {"negative", "positive"}
    with pytest.raises(ValueError, match="3 label names for a model with 2 outputs"):
        export_packed(model, path, tokenizer=paddle_tokenizer, labels=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"max_seq_length 65 is outside \[3, 64\]"):
        export_packed(model, path, tokenizer=paddle_tokenizer, max_seq_length=65)
    with pytest.raises(ValueError, match="pass the tokenizer too"):
        export_packed(model, path, task="sst-2")


def test_bad_inputs_get_clear_errors(tmp_path, paddle_tokenizer):
    single, pair = str(tmp_path / "s.bibert"), str(tmp_path / "p.bibert")
    export_packed(tiny_text_model(), single, tokenizer=paddle_tokenizer, task="sst-2",
                  max_seq_length=16)
    export_packed(tiny_text_model(), pair, tokenizer=paddle_tokenizer, task="rte")
    s, p = load_packed(single), load_packed(pair)
    with pytest.raises(ValueError, match="scores single sentences: pass each input as a string"):
        s.predict([("a", "b")])
    with pytest.raises(ValueError, match=r"scores sentence pairs: pass each input as a tuple"):
        p.predict(["just one sentence"])
    with pytest.raises(ValueError, match="no inputs given"):
        s.predict([])
    with pytest.raises(ValueError, match="pass a list of inputs"):
        s.predict("a bare string")
    long = "word " * 40
    with pytest.warns(UserWarning, match=r"1 of 2 inputs are longer than the model's "
                                         r"max_seq_length 16 tokens and were truncated"):
        ids, _ = s.text_encoder.encode([long, "short"])
    assert len(ids[0]) == 16 and ids[0][-1] == paddle_tokenizer.sep_token_id


def test_files_without_a_vocabulary_still_run_on_ids(tmp_path):
    model = tiny_text_model()
    path = str(tmp_path / "ids.bibert")
    assert export_packed(model, path)["version"] == 1
    runtime = load_packed(path)
    ids = np.array([[101, 2023, 2143, 102]])
    with paddle.no_grad():
        np.testing.assert_allclose(runtime(ids), model(paddle.to_tensor(ids)).numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="stores no vocabulary .* export it again with "
                                         r"export_packed\(model, path, tokenizer=...\)"):
        runtime.predict(["a film"])


def test_version_3_files_are_checked_for_consistency(tmp_path, paddle_tokenizer):
    path = str(tmp_path / "m.bibert")
    export_packed(tiny_text_model(), path, tokenizer=paddle_tokenizer, task="sst-2")
    f = read_packed(path)
    short = dict(f.tensors)
    vocab = f.tensors["tokenizer.vocab"]
    ends = np.flatnonzero(vocab == ord("\n"))
    short["tokenizer.vocab"] = vocab[:ends[-10]]  # the last ten tokens dropped
    with pytest.raises(PackedFormatError, match="vocabulary has 30512 tokens, the model 30522"):
        write_packed(str(tmp_path / "x.bibert"), short, f.config)
    short["tokenizer.vocab"] = vocab[:-2]  # cut inside the last token's 3-byte character
    with pytest.raises(PackedFormatError, match="tokenizer.vocab is not UTF-8 text"):
        write_packed(str(tmp_path / "x.bibert"), short, f.config)
    no_task = {k: v for k, v in f.config.items() if k != "task"}
    with pytest.raises(PackedFormatError, match="needs config\\['tokenizer'\\], "
                                                "config\\['task'\\] and"):
        write_packed(str(tmp_path / "x.bibert"), f.tensors, no_task)
    # a header edited to claim another label count is refused by the reader (the checksum
    # covers the tensors, this check the metadata)
    good = open(path, "rb").read()
    n = int.from_bytes(good[:8], "little")
    hdr = good[8:8 + n].decode()
    hdr2 = hdr.replace('\\"num_labels\\": 2', '\\"num_labels\\": 3')
    assert hdr2 != hdr
    open(path, "wb").write(good[:8] + hdr2.encode() + good[8 + n:])
    with pytest.raises(PackedFormatError, match="task labels \\['0', '1'\\] do not match the "
                                                "model's 3 outputs"):
        read_packed(path)


# ------------------------------------------------------------------ command lines

def run_cli(*args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "paddle_bibert.runtime", *args], input=stdin,
                          capture_output=True, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def packed_pair(tmp_path_factory, paddle_tokenizer):
    d = tmp_path_factory.mktemp("cli")
    model = tiny_text_model()
    export_packed(model, str(d / "s.bibert"), tokenizer=paddle_tokenizer, task="sst-2",
                  max_seq_length=32)
    export_packed(tiny_text_model(seed=5), str(d / "p.bibert"), tokenizer=paddle_tokenizer,
                  task="rte", max_seq_length=32)
    return model, d


def test_predict_command_prints_one_json_line_per_input(packed_pair, paddle_tokenizer):
    model, d = packed_pair
    texts = ["a gripping film", "dull , flat and far too long"]
    r = run_cli("predict", str(d / "s.bibert"), *texts)
    assert r.returncode == 0, r.stderr.decode()
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    want = paddle_logits(model, paddle_tokenizer, texts, 32)
    assert [x["input"] for x in lines] == texts
    assert [x["label"] for x in lines] == [["0", "1"][i] for i in want.argmax(1)]
    e = np.exp(want - want.max(1, keepdims=True))
    np.testing.assert_allclose([[x["probabilities"][k] for k in "01"] for x in lines],
                               e / e.sum(1, keepdims=True), atol=1e-4)
    # the same from stdin, one input per non-blank line
    r2 = run_cli("predict", str(d / "s.bibert"), stdin="\n".join(texts + [""]).encode())
    assert r2.stdout == r.stdout
    # pairs: two tab-separated fields
    r3 = run_cli("predict", str(d / "p.bibert"), stdin=b"a man sleeps\tsomeone is asleep\n")
    assert r3.returncode == 0, r3.stderr.decode()
    rec = json.loads(r3.stdout)
    assert rec["input"] == ["a man sleeps", "someone is asleep"]
    assert rec["label"] in ("entailment", "not_entailment")


@pytest.mark.parametrize("model, args, stdin, message", [
    ("s", [], b"fine\n\xff\xfe bad\n", "stdin line 2 is not UTF-8 text"),
    ("s", [], b"", "no input: give sentences as arguments or one per line on stdin"),
    ("s", ["a\tb"], b"", "input 1 has 2 tab-separated fields; this model scores single sentences"),
    ("p", ["only one"], b"", "input 1 has 1 tab-separated fields; this model scores sentence pairs"),
    ("missing", ["x"], b"", "missing.bibert: no such file"),
])
def test_predict_command_errors_are_one_line(packed_pair, model, args, stdin, message):
    _, d = packed_pair
    r = run_cli("predict", str(d / f"{model}.bibert"), *args, stdin=stdin)
    err = r.stderr.decode().strip()
    assert r.returncode != 0 and r.stdout == b""
    assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_truncation_warns_on_the_command_line(packed_pair):
    _, d = packed_pair
    r = run_cli("predict", str(d / "s.bibert"), "word " * 50)
    assert r.returncode == 0
    assert "warning: 1 of 1 inputs are longer than the model's max_seq_length 32" \
        in r.stderr.decode()


def test_evaluate_command_scores_a_labelled_file(packed_pair, paddle_tokenizer, tmp_path):
    model, d = packed_pair
    dev = os.path.join(GLUE_DIR, "SST-2", "dev.tsv")
    r = run_cli("evaluate", str(d / "s.bibert"), "--data", dev)
    assert r.returncode == 0, r.stderr.decode()
    got = json.loads(r.stdout)
    examples = load_glue("sst-2", GLUE_DIR, "dev")
    want = paddle_logits(model, paddle_tokenizer, [e["sentence"] for e in examples], 32)
    acc = compute_metrics("sst-2", want.argmax(1), [e["labels"] for e in examples])["acc"]
    assert got["task"] == "sst-2" and got["examples"] == 32
    assert got["acc"] == pytest.approx(acc, abs=1e-6)
    # a file without labels (GLUE's test layout), a bad label: one line naming the problem
    (tmp_path / "bad.tsv").write_text("sentence\tlabel\na film\tmaybe\n")
    r = run_cli("evaluate", str(d / "s.bibert"), "--data", str(tmp_path / "bad.tsv"))
    err = r.stderr.decode().strip()
    assert r.returncode != 0 and "line 2: bad sst-2 label 'maybe'" in err and "\n" not in err


def test_runtime_commands_do_not_import_paddle(packed_pair):
    _, d = packed_pair
    code = ("import sys, runpy; sys.argv = ['x', 'predict', sys.argv[1], 'a film'];\n"
            "try: runpy.run_module('paddle_bibert.runtime', run_name='__main__')\n"
            "finally: print('PADDLE' if any(m == 'paddle' or m.startswith(('paddle.', "
            "'paddlenlp')) for m in sys.modules) else 'NO-PADDLE', file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, str(d / "s.bibert")], capture_output=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0 and r.stderr.decode().strip().endswith("NO-PADDLE"), r.stderr


# ------------------------------------------------------------------ export command, old files

def test_export_command_stores_the_folders_tokenizer_and_task(tmp_path, paddle_tokenizer):
    from paddle_bibert.data.glue import write_task_file
    from paddle_bibert.export.__main__ import main

    model = tiny_text_model()
    saved = str(tmp_path / "saved")
    save_binarized(model, saved, paddle_tokenizer)
    write_task_file(saved, "sst-2", 48)
    main([saved, str(tmp_path / "a.bibert"), "--labels", "negative,positive"])
    runtime = load_packed(str(tmp_path / "a.bibert"))
    assert runtime.config["task"] == {"name": "sst-2", "pair": False,
                                      "labels": ["negative", "positive"]}
    assert runtime.config["tokenizer"]["max_seq_length"] == 48
    main([saved, str(tmp_path / "b.bibert"), "--ids_only"])
    assert read_packed(str(tmp_path / "b.bibert")).metadata["format_version"] == "1"
    with pytest.raises(SystemExit, match="error: export_packed: 3 label names"):
        main([saved, str(tmp_path / "c.bibert"), "--labels", "a,b,c"])


def fixed_bit_model(seed=4):
    """The test model binarized by BiT's recipe with every elastic scale and shift set from a
    seeded generator (no first-batch initialisation: no float arithmetic decides them)."""
    model = make_model(seed=seed, max_position_embeddings=128)
    binarize_model(model, BinarizeConfig.from_recipe("bit"))
    rng = np.random.default_rng(seed)
    for _, q in model.named_sublayers():
        if isinstance(q, ElasticSign):
            q.alpha.set_value(rng.uniform(0.5, 2.0, [1]).astype("float32"))
            q.initialized.set_value(np.ones([1], "float32"))
            if q.shift is not None:
                q.shift.set_value((rng.standard_normal(q.shift.shape) * 0.3).astype("float32"))
    model.eval()
    return model


def test_version_2_file_of_the_previous_writer_still_loads(tmp_path):
    """``tests/data/packed/v2_bit.bibert``: written by the version-2 exporter from
    ``fixed_bit_model()``; the current writer gives the same content and the runtime runs it."""
    old = os.path.join(REPO, "tests", "data", "packed", "v2_bit.bibert")
    model = fixed_bit_model()
    new = str(tmp_path / "new.bibert")
    export_packed(model, new)
    f_old, f_new = read_packed(old), read_packed(new)
    assert f_old.metadata["format_version"] == "2"
    assert_same_packed_file(f_old, f_new, model.bibert_config)
    ids = np.array([[2, 17, 33, 9, 41, 0, 0], [5, 6, 7, 8, 9, 10, 11], [3, 59, 0, 0, 0, 0, 0]])
    with paddle.no_grad():
        want = model(paddle.to_tensor(ids)).numpy()
    np.testing.assert_allclose(load_packed(old)(ids), want, atol=1e-4, rtol=1e-5)
