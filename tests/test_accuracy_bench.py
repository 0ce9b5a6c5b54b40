"""The accuracy benchmark runs end to end (tiny model, real-data slices), and resumes."""

import importlib.util
import json
import os

import pytest

from conftest import REPO
from test_commands import glue_slice, tiny_model_dir  # noqa: F401  (fixtures)



def _bench():
    spec = importlib.util.spec_from_file_location("accuracy", os.path.join(REPO, "benchmarks", "accuracy.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny(glue, model, out):
    """The data, tiny model and short budgets every end-to-end run here shares."""
    return ["--data_dir", glue, "--model", model, "--out_dir", str(out), "--batch_size", "8",
            "--max_seq_length", "32", "--pair_seq_len", "32", "--teacher_epochs", "1"]


def test_accuracy_benchmark_end_to_end(glue_slice, tiny_model_dir, tmp_path):  # noqa: F811
    bench = _bench()
    argv = ["--tasks", "sst-2,sts-b", *_tiny(glue_slice, tiny_model_dir, tmp_path / "runs"),
            "--student_steps", "2,sts-b=3",
            "--save_steps", "2", "--variants", "grid,bibert+bertadam+padmax,bit",
            "--table", str(tmp_path / "t.md"), "--plot", str(tmp_path / "p.png"),
            "--curve_plot", str(tmp_path / "c.png")]
    results = bench.main(argv)
    assert set(results) == {"sst-2", "sts-b"}
    for rows in results.values():
        assert set(rows) == {"teacher", "bibert", "baseline", "bibert_pred", "baseline_pred",
                             "bibert+bertadam+padmax", "bit"}
        assert all(r["finished"] for r in rows.values())
    # per-task budgets: sts-b's students ran 3 steps, sst-2's the default 2
    assert {rows["bibert"]["global_step"] for rows in results.values()} == {2, 3}
    assert results["sts-b"]["bit"]["global_step"] == 3 and results["sst-2"]["bit"]["global_step"] == 2
    # the variants really differ in binarization and losses
    cfg = (tmp_path / "runs" / "sst-2" / "baseline" / "best_model" / "bibert_config.yaml").read_text()
    assert "attention: softmax_sign" in cfg
    run_args = lambda n: json.loads((tmp_path / "runs" / "sst-2" / n / "checkpoint-2" / "trainer_state.json")
                                    .read_text())["args"]
    assert run_args("bibert+bertadam+padmax")["optimizer"] == "bertadam" and run_args("bibert")["optimizer"] == "adamw"
    cfg = (tmp_path / "runs" / "sst-2" / "bit" / "best_model" / "bibert_config.yaml").read_text()
    assert "recipe: bit\n" in cfg and "ffn_activation: relu" in cfg
    table = (tmp_path / "t.md").read_text()
    assert "| sst-2 (acc) |" in table and "| sts-b (corr) |" in table and "mean retention" in table
    assert "Command: `python benchmarks/accuracy.py --tasks sst-2,sts-b" in table
    # beside the teacher, what a student that learned nothing scores: the majority training class
    labels = {split: [ln.rstrip("\n").split("\t")[-1] for ln in open(os.path.join(glue_slice, "SST-2", f"{split}.tsv"))][1:]
              for split in ("train", "dev")}
    top = max(set(labels["train"]), key=labels["train"].count)
    const = sum(lab == top for lab in labels["dev"]) / len(labels["dev"])
    teacher = results["sst-2"]["teacher"]["best_metric"]
    assert f"| sst-2 (acc) | {teacher:.4f} | {const:.4f} | " in table
    assert f"| sts-b (corr) | {results['sts-b']['teacher']['best_metric']:.4f} | n/a | " in table
    s = results["sst-2"]["bit"]  # the mean training step, evaluations excluded
    assert f"bit 2 steps {s['train_seconds'] / 60:.1f} min ({s['training_seconds'] / 2:.2f} s/step)" in table
    # the dev curve of every student, read from its run (evaluations at steps 2 and 3 for sts-b)
    assert "Dev corr of each student by step (sts-b" in table
    curve_rows = [ln for ln in table.split("Dev corr of each student by step (sts-b")[1].splitlines()
                  if ln.startswith("| 2 |") or ln.startswith("| 3 |")]
    assert len(curve_rows) == 2 and curve_rows[1].count("|") == 2 + 6  # step + six students
    # time to 90% / 95% of the teacher, from each evaluation's training seconds
    assert "| student | 90% of the teacher | 95% of the teacher |" in table
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert (tmp_path / "p.png").stat().st_size > 1000
    # a second invocation finds every run finished and reproduces the table without training
    teachers = bench.main(argv[:argv.index("--variants")] + ["--teachers_only"])
    assert {t: set(rows) for t, rows in teachers.items()} == {"sst-2": {"teacher"}, "sts-b": {"teacher"}}
    assert teachers["sts-b"]["teacher"]["best_metric"] == results["sts-b"]["teacher"]["best_metric"]
    again = bench.main(argv)
    assert again["sst-2"]["bibert"]["student_metric"] == results["sst-2"]["bibert"]["student_metric"]


def test_recipe_rows_and_the_two_step_variant(glue_slice, tiny_model_dir, tmp_path):  # noqa: F811
    bench = _bench()
    EMA = "bit_mse_ema+drop0+frozen"  # the main job's student, without +glen
    runs = tmp_path / "runs"
    argv = ["--tasks", "sst-2", "--data_dir", glue_slice, "--model", tiny_model_dir, "--out_dir", str(runs),
            "--batch_size", "8", "--max_seq_length", "32", "--teacher_epochs", "1", "--student_steps", "2",
            "--save_steps", "2", "--variants", "bit_a2+glen,bit_2step+glen,bit_mse+glen+gold,bit_mse_ema+drop0+frozen,binarybert_a4,bit_pred_ema+fppool,bit_rep_ema+ramp,bit_mse+fpact,bit_mse+fpweights+fpmap"]
    rows = bench.main(argv)["sst-2"]
    assert all(rows[n]["finished"] for n in ("bit_a2+glen", "bit_2step+glen", "bit_mse+glen+gold", EMA, "binarybert_a4"))
    state = lambda n: json.loads((runs / "sst-2" / n / "checkpoint-2" / "trainer_state.json").read_text())
    assert state(EMA)["args"]["ema_decay"] == 0.99 and state("bit_mse+glen+gold")["args"]["ema_decay"] == 0
    glen, ema = rows["bit_mse+glen+gold"]["arguments"], rows[EMA]["arguments"]
    assert glen["group_by_length"] and not ema["group_by_length"]
    assert glen["gold_weight"] == 0.5 and ema["gold_weight"] == 0  # +gold overrides the recipe's 0
    assert ema["student_dropout"] == 0 and ema["freeze_word_embeddings"]  # +drop0, +frozen
    assert glen["student_dropout"] is None and not glen["freeze_word_embeddings"]
    assert rows["bit_mse+fpact"]["finished"] and rows["bit_mse+fpweights+fpmap"]["finished"]  # ablations train
    pred = rows["bit_pred_ema+fppool"]["arguments"]  # the soft cross-entropy alone, weights averaged
    assert pred["pred_distill"] and not pred["intermediate_distill"] and pred["ema_decay"] == 0.99
    assert ema["intermediate_distill"] and pred["gold_weight"] == 0
    rep = rows["bit_rep_ema+ramp"]["arguments"]  # the hidden-state MSE alone; +ramp
    assert rep["intermediate_distill"] and not rep["pred_distill"] and rep["hidden_loss"] == "mse"
    assert rep["act_ramp"] == 0.5 and ema["act_ramp"] == 0
    assert (runs / "sst-2" / EMA / "checkpoint-2" / "ema.pdparams").is_file()
    # the 2-step student is taught by the W1A2 student with the same modifiers (its teacher metric
    # is that student's best), and trains alike
    assert rows["bit_2step+glen"]["teacher_metric"] == pytest.approx(rows["bit_a2+glen"]["student_metric"])
    assert rows["bit_2step+glen"]["arguments"]["group_by_length"]
    assert rows["bit_mse+glen+gold"]["teacher_metric"] == pytest.approx(rows["teacher"]["best_metric"])
    cfg = lambda n: (runs / "sst-2" / n / "best_model" / "bibert_config.yaml").read_text()
    assert "recipe: bit\nact_bits: 2\n" in cfg("bit_a2+glen") and "recipe: bit\nact_bits: 1\n" in cfg("bit_2step+glen")
    assert "recipe: binarybert\nact_bits: 4\n" in cfg("binarybert_a4")
    assert "pooler: false" in cfg("bit_pred_ema+fppool") and "pooler: true" in cfg("bit_a2+glen")  # +fppool
    with pytest.raises(SystemExit):  # the two-step variant needs its teacher's variant listed first
        bench.main(argv[:-1] + ["bit_2step+glen,bit_a2+glen"])
    with pytest.raises(SystemExit):  # ... with the same modifiers
        bench.main(argv[:-1] + ["bit_a2,bit_2step+glen"])


def test_student_epochs_replace_steps_per_task(glue_slice, tiny_model_dir, tmp_path):  # noqa: F811
    bench = _bench()
    argv = ["--tasks", "sst-2,mrpc", *_tiny(glue_slice, tiny_model_dir, tmp_path / "runs"), "--student_steps", "3",
            "--student_epochs", "0,mrpc=2", "--save_steps", "100", "--variants", "baseline"]
    results = bench.main(argv)
    # mrpc: 2 epochs of its 40 training pairs at batch 8 = 10 steps; sst-2 keeps --student_steps
    assert results["mrpc"]["baseline"]["global_step"] == 2 * 40 // 8
    assert results["sst-2"]["baseline"]["global_step"] == 3


def test_second_step_epochs_shorten_only_the_two_step_variants_second_step(glue_slice, tiny_model_dir, tmp_path,  # noqa: F811
                                                                          capsys):
    bench = _bench()
    argv = ["--tasks", "mrpc", *_tiny(glue_slice, tiny_model_dir, tmp_path / "runs"), "--student_epochs", "2",
            "--second_step_epochs", "1", "--save_steps", "100", "--variants", "bit_mse_ema_a2,bit_mse_ema_2step,baseline"]
    rows = bench.main(argv)["mrpc"]
    # 40 training pairs at batch 8: 5 steps an epoch; the W1A2 step and the plain student keep 2 epochs
    assert rows["bit_mse_ema_a2"]["global_step"] == rows["baseline"]["global_step"] == 10
    assert rows["bit_mse_ema_2step"]["global_step"] == 5
    with pytest.raises(SystemExit):  # a bad value: argparse names it
        bench.main(argv + ["--second_step_epochs", "one"])
    assert "'one'" in capsys.readouterr().err


def test_lr_modifier_gives_a_variant_its_own_learning_rate(glue_slice, tiny_model_dir, tmp_path, capsys):  # noqa: F811
    bench = _bench()
    assert bench.variant("bibert+bertadam+lr1e-4")[1][-2:] == ["--learning_rate", "1e-4"]
    argv = ["--tasks", "mrpc", *_tiny(glue_slice, tiny_model_dir, tmp_path / "runs"), "--student_steps", "2",
            "--save_steps", "2", "--student_lr", "5e-4", "--variants", "baseline,baseline+lr3e-4"]
    bench.main(argv)
    lr = lambda n: json.loads((tmp_path / "runs" / "mrpc" / n / "checkpoint-2" / "trainer_state.json")
                              .read_text())["args"]["learning_rate"]
    assert lr("baseline") == 5e-4 and lr("baseline+lr3e-4") == 3e-4
    for bad in ("lrfast", "lr0"):
        with pytest.raises(SystemExit):
            bench.main(["--variants", f"baseline+{bad}"])
        assert f"unknown modifier +{bad}" in capsys.readouterr().err


def test_budget_modifier_scales_a_variants_steps_or_epochs(glue_slice, tiny_model_dir, tmp_path, capsys):  # noqa: F811
    bench = _bench()
    argv = ["--tasks", "sst-2,mrpc", *_tiny(glue_slice, tiny_model_dir, tmp_path / "runs"), "--student_steps", "4",
            "--student_epochs", "0,mrpc=2", "--save_steps", "100", "--variants", "baseline,baseline+budget0.5"]
    results = bench.main(argv)
    steps = {t: (r["baseline"]["global_step"], r["baseline+budget0.5"]["global_step"]) for t, r in results.items()}
    # sst-2 by steps: 4 and 2; mrpc by epochs (40 pairs at batch 8, 5 steps each): 2 and 1 epoch
    assert steps == {"sst-2": (4, 2), "mrpc": (10, 5)}
    assert bench.budget_scale("bit_mse+budget0.5+glen+budget0.5") == 0.25 and bench.budget_scale("bit_mse") == 1
    for bad in ("budget0", "budget-1", "budgetx"):
        with pytest.raises(SystemExit):
            bench.main(["--variants", f"baseline+{bad}"])
        assert f"unknown modifier +{bad}" in capsys.readouterr().err


def test_ema_modifier_sets_the_weight_average_decay(glue_slice, tiny_model_dir, tmp_path, capsys):  # noqa: F811
    bench = _bench()
    assert bench.variant("bit_mse_ema+ema0.999")[1][-2:] == ["--ema_decay", "0.999"]
    argv = ["--tasks", "mrpc", *_tiny(glue_slice, tiny_model_dir, tmp_path / "runs"), "--student_steps", "2",
            "--save_steps", "2", "--variants", "bit_mse_ema,bit_mse_ema+ema0.9"]
    bench.main(argv)
    decay = lambda n: json.loads((tmp_path / "runs" / "mrpc" / n / "checkpoint-2" / "trainer_state.json")
                                 .read_text())["args"]["ema_decay"]
    assert decay("bit_mse_ema") == 0.99 and decay("bit_mse_ema+ema0.9") == 0.9
    for bad in ("ema1", "ema0", "emax"):
        with pytest.raises(SystemExit):
            bench.main(["--variants", f"bit_mse_ema+{bad}"])
        assert f"unknown modifier +{bad}" in capsys.readouterr().err


def test_tcache_modifier_runs_the_student_with_the_teacher_cache(glue_slice, tiny_model_dir, tmp_path):  # noqa: F811
    bench = _bench()
    argv = ["--tasks", "mrpc", *_tiny(glue_slice, tiny_model_dir, tmp_path / "runs"), "--student_steps", "2",
            "--save_steps", "2", "--variants", "bit_mse_ema,bit_mse_ema+tcache"]
    bench.main(argv)
    summary = lambda n: json.loads((tmp_path / "runs" / "mrpc" / n / "summary.json").read_text())
    assert summary("bit_mse_ema+tcache")["arguments"]["teacher_cache_gb"] == 8
    assert summary("bit_mse_ema+tcache")["teacher_cache"]["batches_run"] == 2
    assert "teacher_cache" not in summary("bit_mse_ema")


def test_reflr_modifier_takes_each_tasks_rate_from_its_config(glue_slice, tiny_model_dir, tmp_path):  # noqa: F811
    import yaml

    bench = _bench()
    tasks = ["mrpc", "sts-b"]
    want = {}
    for t in tasks:
        with open(os.path.join(REPO, "configs", f"{t}.yaml")) as f:
            want[t] = float(yaml.safe_load(f)["student"]["learning_rate"])
    assert want["mrpc"] != want["sts-b"]  # else the test could not tell the tasks' rates apart
    argv = ["--tasks", ",".join(tasks), *_tiny(glue_slice, tiny_model_dir, tmp_path / "runs"),
            "--student_steps", "2", "--save_steps", "2", "--student_lr", "7e-4",
            "--variants", "bit_mse_ema,bit_mse_ema+lr3e-4+reflr"]
    bench.main(argv)
    lr = lambda t, n: json.loads((tmp_path / "runs" / t / n / "checkpoint-2" / "trainer_state.json")
                                 .read_text())["args"]["learning_rate"]
    for t in tasks:
        assert lr(t, "bit_mse_ema") == 7e-4
        assert lr(t, "bit_mse_ema+lr3e-4+reflr") == pytest.approx(want[t])


def test_teacher_forcing_modifier(capsys):
    bench = _bench()
    assert bench.variant("bit_mse_ema+tf0.5")[1][-2:] == ["--teacher_forcing", "0.5"]
    for bad in ("tf0", "tf1.5", "tfx"):
        with pytest.raises(SystemExit):
            bench.main(["--variants", f"bit_mse_ema+{bad}"])
        assert f"unknown modifier +{bad}" in capsys.readouterr().err


def test_per_task_budgets_parse_and_fail_early(capsys):
    bench = _bench()
    steps = bench.PerTask(int, "400,SST-2=1000, rte=240")
    assert (steps["sst-2"], steps["rte"], steps["cola"]) == (1000, 240, 400)
    only = bench.PerTask(float, "sst-2=5e-4")
    assert only["sst-2"] == 5e-4
    with pytest.raises(SystemExit, match="no value for task 'cola'"):
        only["cola"]
    with pytest.raises(SystemExit):  # bad number: argparse names the option
        bench.main(["--student_steps", "sst-2=many"])
    assert "'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no value for task 'cola'"):  # before any training
        bench.main(["--tasks", "sst-2,cola", "--student_steps", "sst-2=10"])


def test_two_step_variants_with_bits_loss(capsys):
    bench = _bench()
    a2, a2_flags = bench.variant("bit_mse_ema_a2+glen")
    a1, a1_flags, teacher = bench.variant("bit_mse_ema_2step+glen")
    assert a2 == {"recipe": "bit", "act_bits": 2} and a1 == {"recipe": "bit"}
    assert teacher == "bit_mse_ema_a2+glen" and a1_flags == a2_flags == bench.variant("bit_mse_ema+glen")[1]
    assert bench.variant("bit_2step+fppool")[2] == "bit_a2+fppool"
    # a 1-bit-only modifier changes the W1A1 step and not the W1A2 step that teaches it
    a1, _, teacher = bench.variant("bit_mse_ema_2step+glen+meaninit")
    assert a1["act_quantizer"] == "elastic_sign_mean" and teacher == "bit_mse_ema_a2+glen"
    with pytest.raises(SystemExit):
        bench.main(["--variants", "bit_mse_ema_a2+meaninit"])
    assert "+meaninit changes 1-bit activations; bit_mse_ema_a2 has 2-bit ones" in capsys.readouterr().err


def test_binarization_modifiers_give_valid_configs():
    from paddle_bibert.surgery import BinarizeConfig

    bench = _bench()
    base = BinarizeConfig.from_dict({"recipe": "bit"})
    for m in ("fppool", "fpact", "fpweights", "fpmap", "meaninit", "gelu"):
        spec, flags = bench.variant(f"bit_mse_ema+glen+{m}")
        conf = BinarizeConfig.from_dict(spec)  # validates every quantizer name
        changed = {k for k in vars(conf) if getattr(conf, k) != getattr(base, k)}
        assert changed == set(bench.MODIFIERS[m]) and "--group_by_length" in flags, m
    assert BinarizeConfig.from_dict(bench.variant("bit_mse+fpact")[0]).act_quantizer == "none"


def test_unknown_variant_rejected(capsys):
    with pytest.raises(SystemExit):
        _bench().main(["--variants", "bibert,nonsense"])
    with pytest.raises(SystemExit):  # a binarization modifier on a full-precision student
        _bench().main(["--variants", "fp_mse+fppool"])
    assert "fp_mse is a full-precision student" in capsys.readouterr().err


def test_init_agreement_benchmark_runs(glue_slice, tiny_model_dir):  # noqa: F811
    mod = _init_agreement()
    lines = mod.main(["--teacher", tiny_model_dir, "--task", "sst-2", "--data_dir", glue_slice,
                      "--recipes", "bibert,bit:2", "--n", "12", "--max_seq_length", "32"])
    rows = [line for line in lines[2:]]
    assert [r.split("|")[1].strip() for r in rows] == ["bibert W1A1", "bit W1A2"]
    for r in rows:
        cells = [float(c) for c in r.strip("|").split("|")[1:]]
        assert len(cells) == 1 + 2 + 1  # embedding + 2 layers, then the label agreement
        assert all(-1.0 <= c <= 1.0 for c in cells[:-1]) and 0.0 <= cells[-1] <= 1.0
        assert cells[0] < 0.999  # the word embeddings are binarized: not the teacher's states
    import numpy as np

    a, b = np.random.default_rng(0).standard_normal((2, 50, 4))
    assert mod.centred_cos(a, a * 3 + 1) == pytest.approx(1.0)
    assert mod.centred_cos(a, -a) == pytest.approx(-1.0)


def _init_agreement():
    spec = importlib.util.spec_from_file_location("init_agreement",
                                                  os.path.join(REPO, "benchmarks", "init_agreement.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_init_agreement_scores_a_regression_student_by_correlation():
    import numpy as np

    agreement = _init_agreement().agreement
    t = np.random.default_rng(1).standard_normal((30, 1))
    assert agreement(2 * t + 1, t) == pytest.approx(1.0)
    assert agreement(-t, t) == pytest.approx(-1.0)  # one output: never "the same label" everywhere
    two = np.random.default_rng(2).standard_normal((30, 2))
    assert agreement(two, two) == 1.0 and agreement(two, two[:, ::-1]) == 0.0  # labels: argmax


def test_init_agreement_starts_the_students_from_another_run(glue_slice, tiny_model_dir, tmp_path):  # noqa: F811
    import paddle
    from paddlenlp.transformers import BertForSequenceClassification

    from paddle_bibert import BinarizeConfig, binarize_model
    from paddle_bibert.surgery import save_binarized

    mod = _init_agreement()
    common = ["--teacher", tiny_model_dir, "--task", "sst-2", "--data_dir", glue_slice,
              "--recipes", "bit", "--n", "12", "--max_seq_length", "32"]
    # a W1A2 student whose latent weights moved away from the teacher's, as training moves them
    start = BertForSequenceClassification.from_pretrained(tiny_model_dir)
    paddle.seed(5)
    for p in start.parameters():
        p.set_value(p + 0.5 * paddle.randn(p.shape, dtype=p.dtype))
    binarize_model(start, BinarizeConfig.from_recipe("bit", 2))
    save_binarized(start, str(tmp_path / "a2"))

    plain = mod.main(common)
    started = mod.main(common + ["--start", str(tmp_path / "a2")])
    assert [r.split("|")[1].strip() for r in started[2:]] == ["start, as trained", "bit W1A1"]
    assert started[3] != plain[2]  # the W1A1 student of the other run's weights, not the teacher's
    with pytest.raises(SystemExit, match="--start"):
        mod.main(common + ["--start", str(tmp_path / "missing")])


def test_init_agreement_recipe_field_overrides():
    recipe_config = _init_agreement().recipe_config
    config, label = recipe_config("bit@act_quantizer=elastic_sign_mean@pooler=false")
    assert (config.recipe, config.act_bits, config.act_quantizer) == ("bit", 1, "elastic_sign_mean")
    assert config.qkv_quantizer == "elastic_sign" and label == "bit W1A1 act_quantizer=elastic_sign_mean pooler=false"
    assert recipe_config("bit:2")[0].act_bits == 2
    with pytest.raises(SystemExit, match="@field=value"):
        recipe_config("bit@pooler")
    with pytest.raises(SystemExit, match="unknown binarization config key"):
        recipe_config("bit@poolr=false")
    with pytest.raises(SystemExit, match="--recipes bit:two"):
        recipe_config("bit:two")


def test_time_to_accuracy_reads_each_evaluations_training_seconds(tmp_path):
    bench = _bench()
    run = tmp_path / "run"
    hist = [{"step": 100, "training_seconds": 60.0, "acc": 0.70}, {"step": 200, "training_seconds": 150.0, "acc": 0.80},
            {"step": 300, "training_seconds": 240.0, "acc": 0.78}, {"step": 400, "training_seconds": 330.0, "acc": 0.84}]
    os.makedirs(run / "checkpoint-400")
    (run / "LATEST").write_text("checkpoint-400")
    (run / "checkpoint-400" / "trainer_state.json").write_text(json.dumps({"history": hist}))
    summary = {"train_seconds": 999.0, "global_step": 400}
    timed, estimated = bench.timed_history(str(run), summary)
    assert not estimated and [m for _, m, _ in timed] == [1.0, 2.5, 4.0, 5.5]
    assert bench.first_reach(timed, "acc", 0.9 * 0.88) == (200, 2.5)  # 0.792: first at step 200
    assert bench.first_reach(timed, "acc", 0.95 * 0.88) == (400, 5.5)  # 0.836
    assert bench.first_reach(timed, "acc", 0.9) is None
    # a run without the per-evaluation clock: minutes from its mean step time, flagged
    for e in hist:
        del e["training_seconds"]
    (run / "checkpoint-400" / "trainer_state.json").write_text(json.dumps({"history": hist}))
    timed, estimated = bench.timed_history(str(run), summary)
    assert estimated and timed[1][1] == pytest.approx(200 * 999.0 / 400 / 60)


def _module(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_full_precision_student_and_the_diagnosis_of_both(glue_slice, tiny_model_dir, tmp_path):  # noqa: F811
    import warnings

    import numpy as np
    from scipy.stats import ConstantInputWarning, pearsonr
    from sklearn.metrics import roc_auc_score

    warnings.simplefilter("ignore", ConstantInputWarning)

    runs = tmp_path / "runs"
    results = _bench().main(["--tasks", "sts-b,sst-2", *_tiny(glue_slice, tiny_model_dir, runs),
                             "--student_steps", "2", "--save_steps", "2", "--variants", "bit_mse,fp_mse"])
    for task in ("sts-b", "sst-2"):
        assert results[task]["fp_mse"]["finished"] and results[task]["bit_mse"]["finished"]
        # the fp student is not binarized; the bit_mse one is
        assert not (runs / task / "fp_mse" / "best_model" / "bibert_config.yaml").exists()
        assert (runs / task / "bit_mse" / "best_model" / "bibert_config.yaml").exists()
    diagnose = _module("diagnose")
    flags = ["--pred_distill", "--intermediate_distill", "--hidden_loss", "mse", "--gold_weight", "0",
             "--data_dir", glue_slice, "--max_seq_length", "32", "--batch_size", "8", "--batches", "2"]
    for student in ("bit_mse", "fp_mse"):
        lines, (t, s, labels) = diagnose.main(
            ["--task_name", "sts-b", "--teacher_path", str(runs / "sts-b" / "teacher"),
             "--student", str(runs / "sts-b" / student), "--plot", str(tmp_path / f"{student}.png"), *flags])
        row = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in lines if line.startswith("| ")}
        mean, std, r_label, r_teacher = (float(x) for x in row["student"])
        assert (mean, std) == pytest.approx((s[:, 0].mean(), s[:, 0].std()), rel=1e-3, abs=1e-7)
        # (a 2-step student may answer every pair alike, up to rounding: then no correlation is defined)
        alike = s[:, 0].std() <= 1e-6 * np.abs(s[:, 0]).max()
        assert alike == np.isnan(r_label) == np.isnan(r_teacher)
        if not alike:
            assert r_label == pytest.approx(pearsonr(s[:, 0], labels)[0], abs=6e-5)
            assert r_teacher == pytest.approx(pearsonr(s[:, 0], t[:, 0])[0], abs=6e-5)
        # each term's gradient alone: the hidden-state MSE never reaches the head
        pred = [float(x) for x in row["pred"]]
        hidden = [float(x) for x in row["hidden"]]
        assert pred[0] > 0 and pred[1] > 0 and pred[3] > 0
        assert hidden[0] > 0 and hidden[1] == 0 and hidden[2] == 0 and hidden[3] > 0
        assert (tmp_path / f"{student}.png").stat().st_size > 1000
    lines, (t, s, labels) = diagnose.main(
        ["--task_name", "sst-2", "--teacher_path", str(runs / "sst-2" / "teacher"),
         "--student", str(runs / "sst-2" / "bit_mse"), *flags])
    row = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in lines if line.startswith("| ")}
    shares = [float(x) for x in row["labels"][:2]]
    assert shares == pytest.approx(list(np.bincount(labels.astype(int), minlength=2) / len(labels)), abs=6e-4)
    student = [float(x) for x in row["student"]]
    assert student[0] + student[1] == pytest.approx(1, abs=1e-3)
    assert student[2] == pytest.approx(float(np.mean(s.argmax(-1) == t.argmax(-1))), abs=6e-4)
    for model, logits in (("student", s), ("teacher", t)):  # the margin's ROC AUC, as sklearn has it
        assert float(row[model][3]) == pytest.approx(roc_auc_score(labels, logits[:, 1] - logits[:, 0]), abs=6e-5)
    # ties count half, a constant score is 0.5, and the AUC is 1 - AUC of the negated score
    assert diagnose.roc_auc(np.array([1.0, 1.0, 2.0, 0.0]), np.array([1, 0, 1, 0])) == pytest.approx(0.875)
    assert diagnose.roc_auc(np.zeros(5), np.array([1, 0, 1, 0, 0])) == 0.5
    x, y = np.random.default_rng(0).standard_normal(50), np.arange(50) % 2
    assert diagnose.roc_auc(-x, y) == pytest.approx(1 - diagnose.roc_auc(x, y))
