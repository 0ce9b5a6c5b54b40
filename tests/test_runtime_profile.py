"""benchmarks/runtime_profile.py: every kernel call of a forward is counted and timed."""

import importlib.util
import os
import sys

import pytest

from paddle_bibert import binarize_model, export_packed
from test_surgery import make_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    spec = importlib.util.spec_from_file_location("runtime_profile",
                                                  os.path.join(REPO, "benchmarks", "runtime_profile.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_kernel_call_of_a_forward_is_counted(tmp_path):
    model = make_model(seed=3)
    binarize_model(model)  # BiBERT: per layer Q/K/V and FFN-in on count intervals, out and FFN-out
    path = str(tmp_path / "m.bibert")
    export_packed(model, path)
    layers = model.config.num_hidden_layers
    rows, total, _ = _tool().profile(path, batch=2, seq_len=8, isa=None, threads=1, warmup=1, repeats=3)
    calls = {k: n for k, (_, n) in rows.items()}
    assert calls["bin_linear_cut"] == 2 * layers
    assert calls["bin_linear"] == 2 * layers + 1  # the pooler too
    assert calls["attention"] == layers and calls["embed"] == 1
    assert calls["layer_norm"] == 2 * layers + 1  # the embeddings' too
    assert 0 < sum(ms for ms, _ in rows.values()) <= total


@pytest.mark.parametrize("argv, message", [
    ([], "give a .bibert file or --shape"),
    (["--shape", "bert-base", "x.bibert"], "give a .bibert file or --shape"),
    (["--shape", "bert-base", "--threads", "1,two"], "comma-separated integers"),
    (["--shape", "bert-base", "--threads", "0"], "must be >= 1"),
    (["no-such-file.bibert"], "no such file"),
    (["--shape", "bert-base", "--compare_tables", "--isa", "generic"], "no table lookup"),
    (["--shape", "bert-base", "--seq_len", "1,128"], "are for --compare_one_call or --by_length"),
    (["--shape", "bert-base", "--seq_len", "8-x", "--by_length"], "a-b"),
    (["--shape", "bert-base", "--compare_tables", "--compare_one_call"], "pass one of"),
    (["--shape", "bert-base", "--by_length", "--compare_one_call"], "pass one of"),
    (["--shape", "bert-base", "--by_length", "--warmup", "0"], "--warmup 1 or more"),
    (["--shape", "bert-base", "--compare_one_call", "--rounds", "0"], "--rounds must be >= 1"),
    (["--shape", "bert-base", "--compare_one_call", "--warmup", "0"], "--warmup 1 or more")])
def test_bad_arguments_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        _tool().main(argv)
    assert message in capsys.readouterr().err


def test_compare_tables_times_both_product_kernels(tmp_path, capsys):
    from paddle_bibert.runtime import available_isas

    if "avx2" not in available_isas():
        pytest.skip("the CPU has no AVX2: no table lookup to compare")
    model = make_model(seed=3)
    binarize_model(model)
    path = str(tmp_path / "m.bibert")
    export_packed(model, path)
    _tool().main([path, "--isa", "avx2", "--threads", "1", "--compare_tables", "--rounds", "2",
                  "--repeats", "2", "--warmup", "1", "--batch", "2", "--seq_len", "8"])
    out = capsys.readouterr().out
    assert "table lookup, last round: **c-avx2, 1 thread(s)**" in out
    assert "XOR and popcount, last round: **c-avx2, 1 thread(s)**" in out
    assert "1 thread(s), ms a forward by round: table lookup" in out and "x as fast" in out


def test_a_length_beyond_the_files_positions_is_a_one_line_error(tmp_path, capsys):
    model = make_model(seed=3)  # 64 positions
    binarize_model(model)
    path = str(tmp_path / "m.bibert")
    export_packed(model, path)
    with pytest.raises(SystemExit, match="exceeds the file's 64 positions; pass --seq_len 64 or less"):
        _tool().main([path, "--threads", "1", "--seq_len", "65"])


def test_compare_one_call_times_the_forward_both_ways_at_each_length(tmp_path, capsys):
    import re

    model = make_model(seed=3)
    binarize_model(model)
    path = str(tmp_path / "m.bibert")
    export_packed(model, path)
    _tool().main([path, "--threads", "1", "--compare_one_call", "--rounds", "2", "--repeats", "2",
                  "--warmup", "1", "--seq_len", "1,9"])
    out = capsys.readouterr().out
    for n in (1, 9):
        m = re.search(rf"batch 1 x {n} tokens, 1 thread\(s\), ms a forward by round: one call "
                      r"([\d.]+), ([\d.]+); kernel by kernel ([\d.]+), ([\d.]+)\. Medians", out)
        assert m and all(float(x) > 0 for x in m.groups()), out


def test_lengths_parse_as_lists_and_ranges():
    assert _tool().parse_lengths("1,8,16-18") == [1, 8, 16, 17, 18]
    for bad in ("", "3-", "a", "1,,2"):
        with pytest.raises(ValueError):
            _tool().parse_lengths(bad)


def test_by_length_times_the_forward_at_each_length(tmp_path, capsys):
    import re

    model = make_model(seed=3)
    binarize_model(model)
    path = str(tmp_path / "m.bibert")
    export_packed(model, path)
    _tool().main([path, "--threads", "1", "--by_length", "--rounds", "2", "--repeats", "2",
                  "--warmup", "1", "--seq_len", "3-5,9"])
    out = capsys.readouterr().out
    assert re.search(r"\*\*\S+, 1 thread\(s\)\*\*, batch 1: ms a forward by length, median of 2", out)
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+), ([\d.]+) \|$", out, re.M)
    assert [int(r[0]) for r in rows] == [3, 4, 5, 9], out
    for _, med, a, b in rows:  # the median of two rounds is their mean
        assert float(a) > 0 and float(b) > 0
        assert abs(float(med) - (float(a) + float(b)) / 2) < 2e-3
