"""benchmarks/budget.py: the reference schedule's cost from finished runs, computed by hand here."""

import importlib.util
import json
import os

import pytest

from conftest import REPO


def _budget():
    spec = importlib.util.spec_from_file_location("budget", os.path.join(REPO, "benchmarks", "budget.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(out, task, variant, steps, seconds, finished=True):
    d = out / task / variant
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"global_step": steps, "train_seconds": seconds,
                                                "finished": finished}))


def test_budget_projects_the_reference_schedule_from_finished_runs(tmp_path, capsys):
    data = tmp_path / "glue"
    (data / "SST-2").mkdir(parents=True)
    # 37 sentences (header + rows): 3 steps per epoch at batch 16
    (data / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"s {i}\t{i % 2}\n" for i in range(37)))
    (data / "RTE").mkdir()
    (data / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\ta {i}\tb {i}\tentailment\n" for i in range(16)))
    out = tmp_path / "runs"
    _run(out, "sst-2", "bibert", 200, 500.0)
    _run(out, "sst-2", "baseline", 100, 150.0)
    _run(out, "rte", "bibert", 40, 180.0)
    _run(out, "rte", "baseline", 40, 90.0, finished=False)  # unfinished: left out

    rows = _budget().main(["--out_dir", str(out), "--data_dir", str(data), "--tasks", "sst-2,rte",
                           "--variants", "bibert,baseline", "--json", str(tmp_path / "b.json")])
    got = {(r["task"], r["variant"]): r for r in rows}
    assert set(got) == {("sst-2", "bibert"), ("sst-2", "baseline"), ("rte", "bibert")}
    # SST-2: 10 reference epochs x ceil(37 / 16) = 30 steps; 2.5 s/step -> 75 s
    r = got["sst-2", "bibert"]
    assert (r["n_train"], r["steps_per_epoch"], r["reference_steps"]) == (37, 3, 30)
    assert r["seconds_per_step"] == pytest.approx(2.5) and r["reference_hours"] == pytest.approx(75 / 3600)
    assert r["epochs_run"] == pytest.approx(200 / 3)
    assert got["sst-2", "baseline"]["reference_hours"] == pytest.approx(30 * 1.5 / 3600)
    # RTE: 20 epochs x 1 step; 4.5 s/step
    assert got["rte", "bibert"]["reference_steps"] == 20
    assert got["rte", "bibert"]["reference_hours"] == pytest.approx(20 * 4.5 / 3600)
    printed = capsys.readouterr().out
    assert "| all listed | bibert | | 240 | | 50 |" in printed and "| 30 (10, 16) |" in printed
    assert json.loads((tmp_path / "b.json").read_text())[0]["task"] == "sst-2"


def test_bits_schedule_counts_its_own_batch_and_epochs(tmp_path):
    data = tmp_path / "glue"
    (data / "STS-B").mkdir(parents=True)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    (data / "STS-B" / "train.tsv").write_text(head + "".join(
        f"{i}\tg\tf\ty\t{i}\tnone\tnone\ta {i}\tb {i}\t{i % 5}.0\n" for i in range(40)))
    out = tmp_path / "runs"
    d = out / "sts-b" / "v"
    d.mkdir(parents=True)  # a run at batch 16: 3 steps per epoch, 2.0 s a step
    (d / "summary.json").write_text(json.dumps({"global_step": 30, "train_seconds": 60.0, "finished": True,
                                                "arguments": {"batch_size": 16}}))
    (r,) = _budget().main(["--out_dir", str(out), "--data_dir", str(data), "--tasks", "sts-b",
                           "--variants", "v", "--schedule", "bit"])
    # BiT: 20 epochs at batch 8 = 20 x 5 steps, each half the run's examples: 100 x 2.0 / 2 s
    assert (r["reference_epochs"], r["reference_batch"], r["reference_steps"]) == (20, 8, 100)
    assert r["reference_hours"] == pytest.approx(100 * 1.0 / 3600) and r["epochs_run"] == pytest.approx(10)


def test_budget_refuses_what_it_cannot_project(tmp_path):
    budget = _budget()
    with pytest.raises(SystemExit, match="not a folder"):
        budget.main(["--out_dir", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="no reference schedule for task 'wnli'"):
        budget.main(["--out_dir", str(tmp_path), "--data_dir", str(tmp_path), "--tasks", "wnli"])
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\nfine\t1\n")
    with pytest.raises(SystemExit, match="no finished run"):
        budget.main(["--out_dir", str(tmp_path), "--data_dir", str(tmp_path), "--tasks", "sst-2"])
