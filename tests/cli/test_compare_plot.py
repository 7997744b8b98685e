"""``adapmtl compare`` over run folders, with the dense inputs as the baseline, and the
sparsity-accuracy curve (``--metric``, ``--plot``, ``--method-of``) (issue 17, part 3).

Every input is a run folder whose summary.json is written here by hand, in the shape ``adapmtl
train`` writes; every expected number is worked out here from those values with the paper's
formulas (REFERENCE.md 8), never taken from the code."""

import json
import statistics
import sys

import pytest

from adapmtl_cli.cli import main

TASKS = ("segment_semantic", "depth_zbuffer")
COMPONENTS = ("backbone", "head.segment_semantic", "head.depth_zbuffer")
PARAMS = 10_000  # weights per component
LOWER_IS_BETTER = {"abs_err", "rel_err"}  # the other metrics here are better higher

DENSE = {  # three seeds of the dense model
    "dense-seed0": {"segment_semantic": {"miou": 0.40, "pixel_acc": 0.70},
                    "depth_zbuffer": {"abs_err": 0.50, "rel_err": 0.20, "delta_1_25": 0.60}},
    "dense-seed1": {"segment_semantic": {"miou": 0.42, "pixel_acc": 0.72},
                    "depth_zbuffer": {"abs_err": 0.54, "rel_err": 0.22, "delta_1_25": 0.62}},
    "dense-seed2": {"segment_semantic": {"miou": 0.44, "pixel_acc": 0.68},
                    "depth_zbuffer": {"abs_err": 0.52, "rel_err": 0.24, "delta_1_25": 0.64}},
}
# Zeros per component of each seed at the two sparsities: 0.5000/0.5002/0.5004 and
# 0.9000/0.9003/0.8998 overall, which round to the same 0.001 (one point per method and level).
ZEROS = {0.5: (5000, 5002, 5004), 0.9: (9000, 9003, 8998)}


def sparse_metrics(method: str, level: float, seed: int) -> dict:
    """Known, distinct values: magnitude loses more than adapmtl, more at 0.9, seeds differ."""
    loss = level * (0.05 if method == "adapmtl" else 0.12) + 0.007 * seed * (1 + seed)
    return {"segment_semantic": {"miou": 0.42 - loss, "pixel_acc": 0.70 - loss / 2},
            "depth_zbuffer": {"abs_err": 0.52 + loss, "rel_err": 0.22 + loss / 3, "delta_1_25": 0.62 - loss}}


SPARSE = {}  # label -> (zeros per component, metrics); two spellings of the labels' tokens
for _seed in range(3):
    for _level in (0.5, 0.9):
        SPARSE[f"adapmtl-{_level}-seed{_seed}"] = (ZEROS[_level][_seed], sparse_metrics("adapmtl", _level, _seed))
        SPARSE[f"magnitude_s{round(100 * _level)}_seed{_seed}"] = (ZEROS[_level][_seed], sparse_metrics("magnitude", _level, _seed))


def summary(zeros: int, metrics: dict) -> dict:
    """A summary.json as `adapmtl train` writes it (step, sparsity, thresholds, metrics)."""
    return {
        "step": 100,
        "sparsity": {"overall": 3 * zeros / (3 * PARAMS),
                     "components": {c: zeros / PARAMS for c in COMPONENTS},
                     "zeros": {c: zeros for c in COMPONENTS},
                     "params": {c: PARAMS for c in COMPONENTS}},
        "thresholds": {c: 0.01 if zeros else 0.0 for c in COMPONENTS},
        "metrics": metrics,
        "notes": [],
    }


def write_run(root, label, zeros, metrics):
    folder = root / label
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary(zeros, metrics), indent=2))
    return folder


@pytest.fixture
def sweep(tmp_path):
    """The folders of a sweep: three dense seeds, two methods at two sparsities, three seeds each."""
    folders = {label: write_run(tmp_path, label, 0, metrics) for label, metrics in DENSE.items()}
    folders.update({label: write_run(tmp_path, label, zeros, metrics) for label, (zeros, metrics) in SPARSE.items()})
    return folders


def _refuse(constant):
    raise ValueError(f"non-strict JSON constant {constant}")


def strict_loads(text):
    """What jq or JavaScript accept: NaN, Infinity and -Infinity are errors."""
    return json.loads(text, parse_constant=_refuse)


def run_json(capsys, *args):
    assert main(["compare", *map(str, args), "--json"]) == 0
    return strict_loads(capsys.readouterr().out)


def one_line_error(capsys, *args, code=2) -> str:
    assert main(["compare", *map(str, args)]) == code
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    (line,) = captured.err.splitlines()
    return line


# -- the paper's formulas, written here --------------------------------------------------------


def relative_changes(metrics: dict, baseline: dict) -> dict:
    """r = +-(M - B) / B * 100 per metric, the sign making an improvement positive."""
    return {task: {key: (-1 if key in LOWER_IS_BETTER else 1) * (metrics[task][key] - base) / base * 100
                   for key, base in values.items()} for task, values in baseline.items()}


def delta_t(metrics: dict, baseline: dict) -> float:
    """Delta_T: per task the SUM of its metrics' r, then the mean over tasks."""
    changes = relative_changes(metrics, baseline)
    return statistics.mean(sum(r.values()) for r in changes.values())


def delta_p(metrics: dict, baseline: dict) -> float:
    """Delta_p: per task the MEAN of its metrics' r, then the mean over tasks."""
    changes = relative_changes(metrics, baseline)
    return statistics.mean(statistics.mean(r.values()) for r in changes.values())


def pooled(models: list[dict]) -> dict:
    return {task: {key: statistics.mean(m[task][key] for m in models) for key in models[0][task]} for task in TASKS}


POOL = pooled(list(DENSE.values()))


# -- inputs: run folders, labels, the baseline ---------------------------------------------------


def test_run_folders_are_read_from_their_summary_and_named_after_the_folder(sweep, tmp_path, capsys):
    eval_json = tmp_path / "exported-eval.json"
    eval_json.write_text(json.dumps(summary(*SPARSE["magnitude_s90_seed1"])))
    comparison = run_json(capsys, sweep["adapmtl-0.9-seed0"], str(sweep["adapmtl-0.5-seed2"]) + "/",
                          sweep["adapmtl-0.5-seed1"] / "summary.json", eval_json, "--baseline", sweep["dense-seed1"])
    rows = comparison["rows"]
    assert [row["model"] for row in rows] == ["baseline", "adapmtl-0.9-seed0", "adapmtl-0.5-seed2", "adapmtl-0.5-seed1",
                                              "exported-eval"]
    assert comparison["baseline_files"] == [str(sweep["dense-seed1"])]
    assert rows[0]["metrics"] == DENSE["dense-seed1"] and rows[0]["delta"]["delta_t"] == pytest.approx(0)
    for row, label in zip(rows[1:], ("adapmtl-0.9-seed0", "adapmtl-0.5-seed2", "adapmtl-0.5-seed1", "magnitude_s90_seed1")):
        zeros, metrics = SPARSE[label]
        assert row["sparsity"]["overall"] == pytest.approx(zeros / PARAMS)
        assert row["delta"]["delta_t"] == pytest.approx(delta_t(metrics, DENSE["dense-seed1"]))
        assert row["delta"]["delta_p"] == pytest.approx(delta_p(metrics, DENSE["dense-seed1"]))


def test_a_folder_without_summary_json_is_a_one_line_error(sweep, tmp_path, capsys):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    expected = f"{empty}: not a run folder: no summary.json; pass a run folder, an eval JSON or a checkpoint"
    assert one_line_error(capsys, sweep["adapmtl-0.5-seed0"], empty) == f"adapmtl: error: {expected}"
    assert one_line_error(capsys, sweep["adapmtl-0.5-seed0"], "--baseline", empty) == f"adapmtl: error: --baseline {expected}"


def test_dense_inputs_are_pooled_into_the_baseline_and_stay_rows(sweep, capsys):
    sparse = "adapmtl-0.9-seed2"
    comparison = run_json(capsys, sweep["dense-seed0"], sweep[sparse], sweep["dense-seed1"], sweep["dense-seed2"])
    assert comparison["baseline"] == "mean of 3 dense models: dense-seed0, dense-seed1, dense-seed2"
    assert comparison["baseline_files"] == [str(sweep[f"dense-seed{s}"]) for s in range(3)]
    rows = {row["model"]: row for row in comparison["rows"]}
    assert list(rows) == ["dense mean", "dense-seed0", sparse, "dense-seed1", "dense-seed2"]
    for task in TASKS:
        assert rows["dense mean"]["metrics"][task] == pytest.approx(POOL[task])
    assert rows["dense mean"]["metrics"]["segment_semantic"]["miou"] == pytest.approx(0.42)
    assert rows[sparse]["delta"]["delta_t"] == pytest.approx(delta_t(SPARSE[sparse][1], POOL))
    # Each seed of the dense model against the pool: the seed noise.
    for seed in range(3):
        label = f"dense-seed{seed}"
        assert rows[label]["delta"]["delta_t"] == pytest.approx(delta_t(DENSE[label], POOL))
        assert rows[label]["delta"]["delta_p"] == pytest.approx(delta_p(DENSE[label], POOL))
    # Seed 0 by hand: seg (0.40-0.42)/0.42 + (0.70-0.70)/0.70 = -4.762; depth -(0.50-0.52)/0.52
    # - (0.20-0.22)/0.22 + (0.60-0.62)/0.62 = 3.846 + 9.091 - 3.226 = 9.711; mean 2.475.
    assert rows["dense-seed0"]["delta"]["delta_t"] == pytest.approx(2.475, abs=1e-3)


def test_a_metric_undefined_in_one_dense_model_is_null_in_the_pool(sweep, tmp_path, capsys):
    blind = json.loads(json.dumps(DENSE["dense-seed2"]))
    blind["segment_semantic"]["miou"] = None  # paper-mode mIoU with no true positive
    write_run(tmp_path, "dense-blind", 0, blind)
    comparison = run_json(capsys, sweep["dense-seed0"], tmp_path / "dense-blind", sweep["adapmtl-0.5-seed0"])
    pool, sparse = comparison["rows"][0], comparison["rows"][-1]
    assert pool["metrics"]["segment_semantic"]["miou"] is None
    assert pool["metrics"]["segment_semantic"]["pixel_acc"] == pytest.approx((0.70 + 0.68) / 2)
    assert {"task": "segment_semantic", "metric": "miou", "reason": "undefined (null or not finite) in the baseline"} \
        in sparse["delta"]["skipped"]


def test_one_dense_input_is_the_baseline_as_it_is(sweep, capsys):
    comparison = run_json(capsys, sweep["adapmtl-0.5-seed0"], sweep["dense-seed2"])
    assert comparison["baseline"] == "dense-seed2" and comparison["baseline_files"] == [str(sweep["dense-seed2"])]
    rows = comparison["rows"]
    assert [row["model"] for row in rows] == ["adapmtl-0.5-seed0", "dense-seed2"]
    assert rows[0]["delta"]["delta_t"] == pytest.approx(delta_t(SPARSE["adapmtl-0.5-seed0"][1], DENSE["dense-seed2"]))
    assert rows[1]["delta"]["delta_t"] == pytest.approx(0)


def test_no_dense_input_and_no_baseline_is_a_one_line_error(sweep, capsys):
    line = one_line_error(capsys, sweep["adapmtl-0.5-seed0"], sweep["magnitude_s90_seed0"])
    assert line.startswith("adapmtl: error: no dense model among the inputs") and line.endswith("pass --baseline FILE")


# -- the curve -------------------------------------------------------------------------------------


def expected_point(labels: list[str], value) -> dict:
    """A point by hand: mean sparsity, mean value, sample sd (n - 1) of its seeds."""
    xs = [SPARSE[label][0] / PARAMS for label in labels]
    ys = [value(SPARSE[label][1]) for label in labels]
    return {"x": pytest.approx(statistics.mean(xs)), "y": pytest.approx(statistics.mean(ys)),
            "sd": pytest.approx(statistics.stdev(ys)), "n": 3, "labels": labels}


def test_curve_of_delta_t_by_hand_for_two_methods_three_seeds_two_sparsities(sweep, capsys):
    curve = run_json(capsys, *sweep.values(), "--metric", "delta_t")["curve"]
    value = lambda metrics: delta_t(metrics, POOL)  # noqa: E731
    assert curve["metric"] == "delta_t"
    assert curve["y_label"] == "Delta_T (points) vs mean of 3 dense models"
    assert list(curve["methods"]) == ["adapmtl", "magnitude"]
    assert curve["methods"]["adapmtl"] == [
        expected_point([f"adapmtl-0.5-seed{s}" for s in range(3)], value),
        expected_point([f"adapmtl-0.9-seed{s}" for s in range(3)], value)]
    assert curve["methods"]["magnitude"] == [
        expected_point([f"magnitude_s50_seed{s}" for s in range(3)], value),
        expected_point([f"magnitude_s90_seed{s}" for s in range(3)], value)]
    dense_deltas = [delta_t(metrics, POOL) for metrics in DENSE.values()]
    assert curve["baseline"] == {"description": "mean of 3 dense models: dense-seed0, dense-seed1, dense-seed2",
                                 "y": 0.0, "dense_inputs": list(DENSE), "n": 3,
                                 "dense_mean": pytest.approx(0, abs=1e-9),
                                 "sd": pytest.approx(statistics.stdev(dense_deltas))}
    assert curve["skipped"] == []


def test_curve_of_a_raw_metric_and_of_one_tasks_delta(sweep, capsys):
    curve = run_json(capsys, *sweep.values(), "--metric", "segment_semantic/miou")["curve"]
    assert curve["y_label"] == "segment_semantic/miou (higher is better)"
    assert curve["methods"]["magnitude"][1] == expected_point([f"magnitude_s90_seed{s}" for s in range(3)],
                                                              lambda m: m["segment_semantic"]["miou"])
    mious = [m["segment_semantic"]["miou"] for m in DENSE.values()]
    assert curve["baseline"]["y"] == pytest.approx(0.42)
    assert curve["baseline"]["sd"] == pytest.approx(statistics.stdev(mious))  # 0.02

    curve = run_json(capsys, *sweep.values(), "--metric", "delta/depth_zbuffer")["curve"]
    assert curve["y_label"] == "Delta depth_zbuffer (points) vs mean of 3 dense models"
    depth = lambda m: sum(relative_changes(m, POOL)["depth_zbuffer"].values())  # noqa: E731
    assert curve["methods"]["adapmtl"][0] == expected_point([f"adapmtl-0.5-seed{s}" for s in range(3)], depth)


def test_an_unknown_metric_is_a_one_line_error_listing_the_choices(sweep, capsys):
    line = one_line_error(capsys, *sweep.values(), "--metric", "miou")
    assert line.startswith("adapmtl: error: --metric 'miou': choose one of delta_t, delta_p, delta/segment_semantic, ")
    assert "segment_semantic/miou" in line and "depth_zbuffer/delta_1_25" in line


@pytest.mark.parametrize(("label", "method"), [
    ("adapmtl-0.9-seed1", "adapmtl"), ("adapmtl_s95_seed2", "adapmtl"), ("adapmtl", "adapmtl"),
    ("magnitude-0.5-seed0", "magnitude"), ("adapmtl_one-threshold-0.9-seed1", "adapmtl_one-threshold"),
    ("s90-snip", "snip"), ("0.9-seed1", "0.9-seed1"),  # nothing left: the label itself
])
def test_method_naming_rule(label, method):
    from adapmtl_cli.workflows.compare import method_name

    assert method_name(label) == method


def test_method_of_names_methods_by_a_regular_expression(sweep, tmp_path, capsys):
    # Labels without digits, where the default rule would make each label its own method.
    labels = ("exp-lth-a", "exp-lth-b", "exp-snip-a")
    for seed, label in enumerate(labels):
        write_run(tmp_path, label, ZEROS[0.9][seed], SPARSE[f"adapmtl-0.9-seed{seed}"][1])
    inputs = [tmp_path / label for label in labels] + [sweep["dense-seed0"]]
    curve = run_json(capsys, *inputs, "--method-of", r"^exp-(\w+)-")["curve"]
    assert curve["method_rule"] == r"--method-of '^exp-(\w+)-'"
    assert curve["metric"] == "delta_t"
    assert {m: [p["labels"] for p in points] for m, points in curve["methods"].items()} == {
        "lth": [["exp-lth-a", "exp-lth-b"]], "snip": [["exp-snip-a"]]}
    lth, (snip,) = curve["methods"]["lth"][0], curve["methods"]["snip"]
    ys = [delta_t(SPARSE[f"adapmtl-0.9-seed{seed}"][1], DENSE["dense-seed0"]) for seed in range(3)]
    assert lth["y"] == pytest.approx((ys[0] + ys[1]) / 2) and lth["sd"] == pytest.approx(abs(ys[0] - ys[1]) / 2 ** 0.5)
    assert snip["y"] == pytest.approx(ys[2]) and snip["sd"] is None and snip["n"] == 1
    line = one_line_error(capsys, *inputs, "--method-of", "^exp-(lth)-")
    assert line == "adapmtl: error: --method-of '^exp-(lth)-' finds no method in the label 'exp-snip-a'"
    assert one_line_error(capsys, *inputs, "--method-of", "(").startswith("adapmtl: error: --method-of '(': not a regular expression")


def test_the_table_shows_the_curve_points(sweep, capsys):
    assert main(["compare", *map(str, sweep.values()), "--metric", "delta_p"]) == 0
    err = capsys.readouterr().err
    assert "Delta_p (points) vs mean of 3 dense models" in err and "dense baseline" in err


# -- the plot ------------------------------------------------------------------------------------


def test_the_sweep_form_plots_a_png_with_no_baseline(sweep, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "curve.png"
    assert main(["compare", *(f"{folder}/" for folder in sweep.values()), "--plot", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    document = strict_loads(captured.out)  # the --json document alone on stdout
    assert document["curve"]["metric"] == "delta_t" and document["baseline"].startswith("mean of 3 dense models")
    assert captured.err.strip().endswith(f"wrote {out}")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width >= 800
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["curve.png"]  # no temporary file left


@pytest.mark.parametrize(("suffix", "start"), [(".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_the_suffix_chooses_the_format(sweep, tmp_path, capsys, suffix, start):
    out = tmp_path / f"curve{suffix}"
    inputs = [sweep[label] for label in ("adapmtl-0.5-seed0", "adapmtl-0.9-seed0", "magnitude_s50_seed0")]
    assert main(["compare", *map(str, inputs), "--baseline", str(sweep["dense-seed0"]), "--plot", str(out),
                 "--metric", "depth_zbuffer/abs_err"]) == 0
    data = out.read_bytes()
    assert data.startswith(start)
    if suffix == ".svg":
        assert b"<svg" in data


def test_a_plot_file_of_an_unknown_format_is_refused_before_any_work(sweep, tmp_path, capsys):
    line = one_line_error(capsys, *sweep.values(), "--plot", tmp_path / "curve.jpeg")
    assert line.startswith("adapmtl: error: --plot") and ".png, .svg, .pdf" in line
    line = one_line_error(capsys, *sweep.values(), "--plot", tmp_path / "no" / "curve.png")
    assert line.startswith("adapmtl: error: --plot") and "no folder" in line


def test_plot_without_matplotlib_is_a_one_line_error(sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = tmp_path / "curve.png"
    line = one_line_error(capsys, *sweep.values(), "--plot", out)
    assert line == "adapmtl: error: --plot needs matplotlib: pip install 'adapmtl[plot]'"
    assert not out.exists()
