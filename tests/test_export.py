"""Bit packing, the packed file format (contents, versions, rejection of bad files and of
recipes that are not 1-bit), size/FLOPs accounting."""

import json
import os

import numpy as np
import paddle
import pytest

from paddle_bibert import BinarizeConfig, binarize_model, export_packed, save_binarized
from paddle_bibert.export import (FORMAT_NAME, FORMAT_VERSION, PackedFormatError, nwords,
                                  pack_bits, pack_signs, read_packed, unpack_bits, unpack_signs)
from paddle_bibert.export.cost import SHAPES, BertShape, count
from paddle_bibert.quant.quantizers import ElasticSign
from paddle_bibert.runtime import load_packed

from conftest import REPO, assert_same_packed_file
from test_surgery import IDS, make_model, np_binw, np_sign


@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 130, 200])
def test_pack_roundtrip_and_sign_convention(rng, n):
    x = rng.standard_normal((3, n)).astype(np.float32)
    x[0, 0] = 0.0
    x[1, 0] = -0.0
    words = pack_signs(x)
    assert words.dtype == np.uint64 and words.shape == (3, nwords(n))
    np.testing.assert_array_equal(unpack_signs(words, n), np_sign(x))
    assert unpack_signs(words, n)[0, 0] == 1 and unpack_signs(words, n)[1, 0] == -1  # +0, -0
    # LSB first: element k is bit k % 64 of word k // 64
    k = n - 1
    assert (int(words[2, k // 64]) >> (k % 64)) & 1 == int(np.signbit(x[2, k]))
    # pad bits are zero, and unpacking refuses words whose pad bits are set
    if n % 64:
        assert (words[:, -1] >> np.uint64(n % 64) == 0).all()
        bad = words.copy()
        bad[0, -1] |= np.uint64(1) << np.uint64(63)
        with pytest.raises(ValueError, match="pad bits"):
            unpack_bits(bad, n)


@pytest.mark.parametrize("n", [1, 7, 64, 65, 129])
def test_popcount_identities_with_zero_padding(rng, n):
    """a.w = n - 2 popcount(a XOR w); A.v = popcount(A) - 2 popcount(A AND v) (v sign bits)."""
    a, w = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    A = rng.random(n) > 0.5
    pa, pw, pA = pack_signs(a), pack_signs(w), pack_bits(A)
    popc = lambda words: sum(bin(int(x)).count("1") for x in words)  # noqa: E731
    assert n - 2 * popc(pa ^ pw) == int(np_sign(a) @ np_sign(w))
    assert popc(pA) - 2 * popc(pA & pw) == int(A.astype(int) @ np_sign(w))


def _export(tmp_path, **cfg):
    model = make_model(seed=4)
    binarize_model(model, cfg or None)
    path = str(tmp_path / "m.bibert")
    info = export_packed(model, path)
    return model, path, info


def test_file_holds_the_models_binary_weights_and_config(tmp_path):
    model, path, info = _export(tmp_path)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    f = read_packed(path)
    assert f.metadata["format"] == FORMAT_NAME and f.metadata["format_version"] == "1"
    t, c = f.tensors, f.config
    # a binarized linear: bits of W - mean_0(W) per output channel, alpha = mean_0 |W|
    w = sd["bert.encoder.layers.1.linear1.weight"]  # [in 32, out 64]
    assert t["layers.1.ffn_in.bits"].shape == (64, 1)
    got = unpack_signs(t["layers.1.ffn_in.bits"], 32).T * t["layers.1.ffn_in.alpha"][None]
    np.testing.assert_allclose(got, np_binw(w), rtol=1e-6)
    np.testing.assert_array_equal(t["layers.1.ffn_in.bias"], sd["bert.encoder.layers.1.linear1.bias"])
    # the word embedding per row
    e = sd["bert.embeddings.word_embeddings.weight"]
    got = unpack_signs(t["embeddings.word.bits"], 32) * t["embeddings.word.alpha"][:, None]
    np.testing.assert_allclose(got, np_binw(e, axis=-1), rtol=1e-6)
    # full-precision parts verbatim
    np.testing.assert_array_equal(t["embeddings.position"],
                                  sd["bert.embeddings.position_embeddings.weight"])
    np.testing.assert_array_equal(t["classifier.weight"], sd["classifier.weight"])
    assert t["layers.0.ln2.weight"].dtype == np.float32
    assert c["attention"] == "bool" and c["num_hidden_layers"] == 2 and c["num_labels"] == 2
    assert c["layer_norm_eps"]["layers.1.ln2"] == model.bert.encoder.layers[1].norm2._epsilon
    assert c["pad_token_id"] == model.bert.pad_token_id and c["hidden_act"] == "gelu"
    assert info["bytes"] == os.path.getsize(path)


@pytest.mark.parametrize("cfg, match", [
    ({"ffn_in": False}, "layers.0.linear1 is Linear"),
    ({"attention": "softmax"}, "attention='softmax'.*not 1-bit"),
    ({"word_embeddings": False}, "word_embeddings is not a BiEmbedding"),
    ({"qkv_quantizer": "none"}, "Q/K/V quantizer"),
    ({"recipe": "bit", "attention_quantizer": "ste_sign"}, "takes elastic_unsigned with this mode"),
    ({"recipe": "bit", "qkv_quantizer": "elastic_unsigned"}, "Q quantizer is elastic_unsigned"),
    ({"qkv_quantizer": "elastic_sign"}, "elastic_sign with attention='bool'.*only with"),
    ({"recipe": "bit", "act_quantizer": "none"}, "input quantizer is none"),
])
def test_unsupported_configs_are_named(tmp_path, cfg, match):
    model = make_model()
    binarize_model(model, cfg)
    with pytest.raises(ValueError, match=match):
        export_packed(model, str(tmp_path / "x.bibert"))
    assert not (tmp_path / "x.bibert").exists()


def test_full_precision_model_rejected(tmp_path):
    with pytest.raises(ValueError, match="not binarized"):
        export_packed(make_model(), str(tmp_path / "x.bibert"))


def _corrupt(path, offset_from_end, new=None):
    data = bytearray(open(path, "rb").read())
    i = len(data) - offset_from_end
    data[i] = (data[i] ^ 0x10) if new is None else new
    open(path, "wb").write(bytes(data))


def test_corrupted_truncated_and_foreign_files_rejected(tmp_path):
    _, path, _ = _export(tmp_path)
    good = open(path, "rb").read()
    # one flipped bit in the tensor payload
    _corrupt(path, 100)
    with pytest.raises(PackedFormatError, match="checksum mismatch"):
        read_packed(path)
    with pytest.raises(PackedFormatError, match="checksum mismatch"):
        load_packed(path)
    # truncated payload, truncated header, empty file
    for cut, match in [(len(good) - 10, "truncated"), (200, "truncated"), (3, "truncated")]:
        open(path, "wb").write(good[:cut])
        with pytest.raises(PackedFormatError, match=match):
            read_packed(path)
    # wrong magic / newer version (header edited, same length)
    n = int.from_bytes(good[:8], "little")
    for old, new, match in [(FORMAT_NAME, "bibert-pocked", "not a packed BiBERT file"),
                            ('"format_version":"1"', '"format_version":"9"', "newer")]:
        hdr = good[8:8 + n].decode()
        assert old in hdr
        open(path, "wb").write(good[:8] + hdr.replace(old, new).encode() + good[8 + n:])
        with pytest.raises(PackedFormatError, match=match):
            read_packed(path)
    # a plain safetensors checkpoint is not a packed file
    from safetensors.numpy import save_file
    save_file({"w": np.zeros(3, np.float32)}, path)
    with pytest.raises(PackedFormatError, match="not a packed BiBERT file"):
        read_packed(path)
    open(path, "wb").write(good)
    read_packed(path)  # the intact file still loads


def test_size_on_disk_matches_accounting(tmp_path):
    model, path, info = _export(tmp_path)
    model.save_pretrained(str(tmp_path / "fp"))
    fp_bytes = sum(os.path.getsize(os.path.join(tmp_path / "fp", f))
                   for f in os.listdir(tmp_path / "fp") if f.endswith((".safetensors", ".pdparams")))
    packed = os.path.getsize(path)
    shape = BertShape.from_config(info["config"])
    c = count(shape)
    assert fp_bytes >= c["fp_bytes"]  # the float checkpoint holds every parameter in float32
    n = int.from_bytes(open(path, "rb").read(8), "little")
    assert packed - 8 - n == c["packed_file"]  # payload = exactly what cost.py predicts
    ratio = fp_bytes / packed
    # the tiny model is dominated by its full-precision position table; still several x smaller
    assert ratio > 3, (fp_bytes, packed)


def test_cost_reproduces_bert_base_accounting():
    c = count(SHAPES["bert-base"], 128)
    assert c["params"] == 109_483_778
    assert round(c["fp_bytes"] / 2**20) == 418  # paper: 418 MB
    assert abs(c["fp_flops"] / 1e9 - 22.5) / 22.5 < 0.005  # paper: 22.5 G
    assert abs(c["bops"] / 64 / 1e9 - 0.349) < 0.001
    assert 0.38 <= c["bi_flops_paper"] / 1e9 <= 0.45  # paper: 0.4 G
    assert abs(c["bi_bytes_paper_tables_1bit"] / 2**20 - 13.4) < 0.15  # paper: 13.4 MB
    assert c["fp_bytes"] / c["packed_file"] > 27


def test_command_line_export(tmp_path, capsys):
    from paddle_bibert.export.__main__ import main

    model = make_model(seed=5)
    binarize_model(model)
    save_binarized(model, str(tmp_path / "saved"))
    main([str(tmp_path / "saved"), str(tmp_path / "out.bibert")])
    assert "wrote" in capsys.readouterr().out
    runtime = load_packed(str(tmp_path / "out.bibert"))
    np.testing.assert_allclose(runtime(IDS), model(paddle.to_tensor(IDS)).numpy(), atol=1e-4)
    with pytest.raises(SystemExit, match="not saved by save_binarized"):
        main([str(tmp_path), str(tmp_path / "y.bibert")])


def test_metadata_is_plain_json(tmp_path):
    _, path, _ = _export(tmp_path)
    n = int.from_bytes(open(path, "rb").read(8), "little")
    meta = json.loads(open(path, "rb").read()[8:8 + n])["__metadata__"]
    assert json.loads(meta["config"])["binarize"]["recipe"] == "bibert"
    assert len(meta["payload_sha256"]) == 64


# ------------------------------------------------------------------ 1-bit recipes beyond BiBERT


def padded_ids(rng, b, l, vocab=60):
    """``[b, l]`` token ids: the first row full length, the others padded (pad id 0) at the end
    to random lengths 1..l."""
    ids = rng.integers(1, vocab, (b, l))
    for i in range(1, b):
        ids[i, rng.integers(1, l + 1):] = 0
    return ids


def trained_1bit_model(config, seed=4, max_position_embeddings=128, shift_std=0.3, **shape):
    """A tiny random BERT binarized by ``config`` (a recipe name or a config dict), after one
    training-mode forward (elastic scales initialise on the first training batch), with every
    elastic shift set to small random values so that it moves some bits; in eval mode.
    ``shape``: config overrides (e.g. hidden_size)."""
    model = make_model(seed=seed, max_position_embeddings=max_position_embeddings, **shape)
    binarize_model(model, BinarizeConfig.from_recipe(config) if isinstance(config, str) else config)
    rng = np.random.default_rng(seed)
    model.train()
    with paddle.no_grad():
        # BiT's map scale initialises to a_p = 4 mean(p) = 4 / L; with L odd, a_p / 2 = 2 / L
        # is no 1 / n, the probability of a row of n tied binary scores: no row sits exactly
        # on the threshold, where float32 rounding of the softmax would decide the bit
        model(paddle.to_tensor(padded_ids(rng, 6, 23)))
    model.eval()
    for _, q in model.named_sublayers():
        if isinstance(q, ElasticSign):
            assert float(q.initialized) == 1 and float(q.alpha) != 1.0
            if q.shift is not None:
                b = rng.standard_normal(q.shift.shape) * shift_std
                q.shift.set_value(b.astype("float32"))
    return model


ONE_BIT = [  # config, format version of its file
    ("bibert", 1), ("baseline", 1), ("binarybert", 1), ("bibert_elastic", 2), ("bit", 2),
    ({"ffn_activation": "relu"}, 2),  # BiBERT with a ReLU FFN
    ({"recipe": "bit", "qkv_quantizer": "ste_sign"}, 2),  # BiT's map over sign(Q), sign(K)
    ({"recipe": "bit", "act_quantizer": "elastic_sign_mean"}, 2),  # packed as elastic_sign
]


@pytest.mark.parametrize("config, version", ONE_BIT,
                         ids=lambda c: f"v{c}" if isinstance(c, int) else str(c))
def test_one_bit_recipes_export_and_run(tmp_path, config, version):
    model = trained_1bit_model(config)
    path = str(tmp_path / "m.bibert")
    info = export_packed(model, path)
    f = read_packed(path)
    assert info["version"] == version and f.metadata["format_version"] == str(version)
    assert ("quantizers" in f.config) == (version == 2)  # a version-1 file keeps its old config
    with paddle.no_grad():
        want = model(paddle.to_tensor(IDS)).numpy()
    np.testing.assert_allclose(load_packed(path)(IDS), want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("recipe", ["bibert_elastic", "bit"])
def test_elastic_recipe_file_holds_scales_shifts_and_modes(tmp_path, recipe):
    model = trained_1bit_model(recipe)
    path = str(tmp_path / "m.bibert")
    export_packed(model, path)
    f = read_packed(path)
    t, c, quant = f.tensors, f.config, f.config["quantizers"]
    assert f.metadata["format_version"] == "2" and FORMAT_VERSION >= 2
    assert c["binarize"]["recipe"] == recipe
    bit = recipe == "bit"
    assert c["hidden_act"] == ("relu" if bit else "gelu")
    assert c["attention"] == ("softmax" if bit else "bool")
    layer = model.bert.encoder.layers[1]
    att = layer.self_attn
    # each BiLinear's input quantizer: name, scale a and shift b (one per input channel)
    for site, lin in [("layers.1.q", att.q_proj), ("layers.1.out", att.out_proj),
                      ("layers.1.ffn_in", layer.linear1), ("layers.1.ffn_out", layer.linear2),
                      ("pooler", model.bert.pooler.dense)]:
        q = lin.act_quantizer
        assert quant[f"{site}.input"] == q.name
        np.testing.assert_array_equal(t[f"{site}.input.scale"], [float(q.alpha)])
        np.testing.assert_array_equal(t[f"{site}.input.shift"], q.shift.numpy())
        assert t[f"{site}.input.shift"].shape == (lin.weight.shape[0],)
    assert quant["layers.1.ffn_out.input"] == ("elastic_unsigned" if bit else "elastic_sign")
    if bit:  # Q, K, V each their own elastic_sign (shift per head channel); the {0, a} map
        for m, q in zip("qkv", (att.q_quantizer, att.k_quantizer, att.v_quantizer)):
            assert quant[f"layers.1.attn.{m}"] == "elastic_sign"
            np.testing.assert_array_equal(t[f"layers.1.attn.{m}.scale"], [float(q.alpha)])
            np.testing.assert_array_equal(t[f"layers.1.attn.{m}.shift"], q.shift.numpy())
            assert t[f"layers.1.attn.{m}.shift"].shape == (att.head_dim,)
        assert quant["layers.1.attn.map"] == "elastic_unsigned"
        np.testing.assert_array_equal(t["layers.1.attn.map.scale"],
                                      [float(att.attention_quantizer.alpha)])
        assert "layers.1.attn.map.shift" not in t
        # one weight scale per matrix (tensor_mean_sign), stored once per column
        w = layer.linear1.weight.numpy().astype(np.float64)
        alpha = t["layers.1.ffn_in.alpha"]
        assert (alpha == alpha[0]).all()
        np.testing.assert_allclose(alpha[0], np.abs(w).mean(), rtol=1e-5)
        np.testing.assert_array_equal(unpack_signs(t["layers.1.ffn_in.bits"], 32).T,
                                      np_sign(w - w.mean()))
    else:  # Q/K/V stay ste_sign, Bi-Attention map
        assert {quant[f"layers.1.attn.{m}"] for m in "qkv"} == {"ste_sign"}
        assert quant["layers.1.attn.map"] == "bool" and "layers.1.attn.q.scale" not in t


@pytest.mark.parametrize("recipe, bits", [("bit", 2), ("binarybert", 4)])
def test_multibit_recipes_are_refused_as_not_1bit(tmp_path, recipe, bits):
    model = make_model()
    binarize_model(model, BinarizeConfig.from_recipe(recipe, act_bits=bits))
    with pytest.raises(ValueError) as err:
        export_packed(model, str(tmp_path / "x.bibert"))
    msg = str(err.value)
    assert f"lsq{bits} ({bits}-bit): recipe {recipe} with act_bits {bits} is not 1-bit; only 1-bit recipes " \
           "export packed" in msg, msg
    assert msg.startswith("export_packed: bert.encoder.layers.0."), msg  # names the module
    assert not (tmp_path / "x.bibert").exists()


def test_file_claiming_an_older_version_than_its_features_is_refused(tmp_path):
    export_packed(trained_1bit_model("bit"), str(tmp_path / "m.bibert"))
    good = open(tmp_path / "m.bibert", "rb").read()
    n = int.from_bytes(good[:8], "little")
    hdr = good[8:8 + n].decode()
    assert '"format_version":"2"' in hdr
    open(tmp_path / "m.bibert", "wb").write(
        good[:8] + hdr.replace('"format_version":"2"', '"format_version":"1"').encode()
        + good[8 + n:])
    with pytest.raises(PackedFormatError, match="version 1 file uses version 2 features"):
        read_packed(str(tmp_path / "m.bibert"))


#: Files of format version 1 (the first packed format), written by its exporter from
#: ``make_model(seed=4)`` binarized with each attention (see tests/data/README.md).
V1_FILES = os.path.join(REPO, "tests", "data", "packed")


@pytest.mark.parametrize("attention", ["bool", "softmax_sign"])
def test_version_1_files_of_the_previous_writer_still_load(tmp_path, attention):
    model = make_model(seed=4)
    binarize_model(model, {"attention": attention})
    old, new = os.path.join(V1_FILES, f"v1_{attention}.bibert"), str(tmp_path / "new.bibert")
    export_packed(model, new)
    f_old, f_new = read_packed(old), read_packed(new)
    assert f_old.metadata["format_version"] == "1"
    # the current writer still writes BiBERT as version 1, with the same content
    assert "method" in f_old.config["binarize"] and "recipe" in f_new.config["binarize"]
    assert_same_packed_file(f_old, f_new, model.bibert_config)
    with paddle.no_grad():
        want = model(paddle.to_tensor(IDS)).numpy()
    for backend in ("auto", "numpy"):
        np.testing.assert_allclose(load_packed(old, backend=backend)(IDS), want, atol=1e-4)


def test_command_line_export_of_a_saved_bit_model(tmp_path, capsys):
    """save_binarized keeps the elastic scales and shifts; the command exports them."""
    from paddle_bibert.export.__main__ import main

    model = trained_1bit_model("bit", seed=7)
    save_binarized(model, str(tmp_path / "saved"))
    main([str(tmp_path / "saved"), str(tmp_path / "out.bibert")])
    assert "recipe=bit, attention=softmax, format version 2" in capsys.readouterr().out
    ids = padded_ids(np.random.default_rng(7), 5, 70)
    with paddle.no_grad():
        want = model(paddle.to_tensor(ids)).numpy()
    np.testing.assert_allclose(load_packed(str(tmp_path / "out.bibert"))(ids), want, atol=1e-4,
                               rtol=1e-5)


def test_cost_notes_are_computed_from_the_counts():
    from paddle_bibert.export.cost import notes

    for seq_len in (128, 64):
        c = count(SHAPES["bert-base"], seq_len)
        text = notes(SHAPES["bert-base"], seq_len)
        assert f"seq_len {seq_len}" in text
        assert f"linears {c['mm_linear_flops'] / 1e9:.2f} G" in text and f"BOPs/64 = {c['bops'] / 64e9:.2f} G" in text
        no_gelu = c["bi_flops"] - c["gelu_flops"] + c["bops"] / 64
        assert f"= {no_gelu / 1e9:.3f} G, {c['fp_flops'] / no_gelu:.1f}x" in text
    assert notes(SHAPES["bert-base"], 64) != notes(SHAPES["bert-base"], 128)
