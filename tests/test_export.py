"""Bit packing, the packed file format (contents, rejection of bad files), size/FLOPs accounting."""

import json
import os

import numpy as np
import paddle
import pytest

from paddle_bibert import binarize_model, export_packed, save_binarized
from paddle_bibert.export import (FORMAT_NAME, PackedFormatError, nwords, pack_bits, pack_signs,
                                  read_packed, unpack_bits, unpack_signs)
from paddle_bibert.export.cost import SHAPES, BertShape, count
from paddle_bibert.runtime import load_packed

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
    assert json.loads(meta["config"])["binarize"]["method"] == "bibert"
    assert len(meta["payload_sha256"]) == 64
