"""`imgprep bench ...` and `imgprep experiment ...` end to end at minimal sizes."""

import csv
import json
import os
import statistics

import pytest
from click.testing import CliRunner

from imgprep.cli.main import main

PNG = b"\x89PNG\r\n\x1a\n"
BENCH_TRAIN = ["bench", "train", "--batch-size", 4, "--repeats", 1, "--width-mult", 0.125, "--workers", 1]


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def data(prepared128):
    return prepared128


def check_outputs(tmp_path, name):
    res = json.load(open(tmp_path / f"{name}.json"))
    assert res["results"] and "environment" in res and "config" in res
    assert res["environment"]["versions"]["torch"]
    assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG)
    return res


def test_bench_prepare(synth_src, tmp_path):
    out = run(
        "bench",
        "prepare",
        synth_src,
        "--images",
        12,
        "--workers",
        "1,2",
        "--repeats",
        2,
        "--json-out",
        tmp_path / "p.json",
        "--plot",
        tmp_path / "p.png",
    )
    res = check_outputs(tmp_path, "p")
    assert [r["variant"] for r in res["results"]] == ["naive Pillow", "imgprep w=1", "imgprep w=2"]
    for r in res["results"]:  # the figure is the median of the runs, the spread their min and max
        assert len(r["runs"]) == 2 and r["images_per_second"] == pytest.approx(statistics.median(r["runs"]), abs=0.01)
        assert (r["min"], r["max"]) == pytest.approx((min(r["runs"]), max(r["runs"])), abs=0.01)
    assert "imgprep w=2" in out
    cpu = res["environment"]["cpu"]  # the CPU told apart beyond its model name
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0]
        assert isinstance(cpu["extensions"], list) and ("avx2" in cpu["extensions"]) == (" avx2" in first)
        if "vendor_id" in first:  # x86
            assert cpu["vendor"] in first and cpu["family"] is not None


def test_bench_load(data, tmp_path):
    run(
        "bench",
        "load",
        data,
        "--batch-sizes",
        4,
        "--workers",
        1,
        "--steps",
        2,
        "--repeats",
        1,
        "--json-out",
        tmp_path / "l.json",
        "--plot",
        tmp_path / "l.png",
    )
    res = check_outputs(tmp_path, "l")
    assert {r["loader"] for r in res["results"]} == {"dali (cpu)", "torch", "baseline"}
    assert all(r["images_per_second"] > 0 for r in res["results"])


def test_bench_train(data, tmp_path):
    run(
        *BENCH_TRAIN,
        data,
        "--steps",
        2,
        "--json-out",
        tmp_path / "t.json",
        "--plot",
        tmp_path / "t.png",
    )
    res = check_outputs(tmp_path, "t")
    row = res["results"][0]
    assert row["placement"] == "cpu"
    assert row["limited_by"] == ("data" if row["loader_only"] < row["model_synthetic"] else "model")
    assert row["peak_tflops"] is None and row["mfu_model"] is None  # no known peak for a CPU


def test_bench_train_flops_and_mfu(data, tmp_path):
    from imgprep.trainer.config import AlexNetConfig
    from imgprep.trainer.model import forward_macs

    run(
        *BENCH_TRAIN,
        data,
        "--steps",
        1,
        "--peak-tflops",
        0.5,
        "--json-out",
        tmp_path / "t.json",
    )
    row = json.load(open(tmp_path / "t.json"))["results"][0]
    flops = 6 * forward_macs(AlexNetConfig(4, 0.125), 112)  # 4 classes, 128-px images cropped to 112
    assert row["flops_per_image"] == flops and row["peak_tflops"] == 0.5
    assert row["mfu_model"] == pytest.approx(row["model_synthetic"] * flops / 0.5e12, rel=1e-3)
    assert row["mfu_with_loader"] == pytest.approx(row["training_with_loader"] * flops / 0.5e12, rel=1e-3)
    assert row["model_synthetic"] > 0 and row["training_with_loader"] > 0 and row["loader_only"] > 0


EXP_ARGS = ["--epochs", 1, "--steps-per-epoch", 1, "--width-mult", 0.125, "--batch-size", 4, "--workers", 1]


@pytest.mark.parametrize(
    "name,extra,n_cells",
    [
        ("ablate-conv", [], 6),
        ("dropout", ["--dropouts", "0,0.5"], 2),
        ("batch-momentum", ["--batch-sizes", "4,8", "--momenta", "0.9"], 2),
        ("activation", ["--target-error", "1.0"], 2),
    ],
)
def test_experiments(data, tmp_path, name, extra, n_cells):
    out = tmp_path / name
    run("experiment", name, data, "--out", out, *EXP_ARGS, "--seeds", 1, *extra)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == n_cells and {r["seed"] for r in rows} == {"0"}
    assert (out / "results.md").read_text().startswith(f"# {name}")
    assert (out / "chart.png").read_bytes().startswith(PNG)
    assert len(os.listdir(out / "runs")) == n_cells
    if name == "batch-momentum":
        assert [float(r["lr"]) for r in rows] == [0.01 * 4 / 128, 0.01 * 8 / 128]  # linear scaling rule
    if name == "activation":
        assert [r["epochs_to_target"] for r in rows] == ["1", "1"] and (out / "timing.csv").exists()
        assert (out / "curves.png").read_bytes().startswith(PNG)
        assert json.load(open(out / "ratio.json"))["tanh_over_relu_epochs_to_target"] == 1.0
    # resumable: a second call repeats no run; and the same seed gives the same table
    again = run("experiment", name, data, "--out", out, *EXP_ARGS, "--seeds", 1, *extra)
    assert again.count("finished earlier, kept") == n_cells
    assert list(csv.DictReader(open(out / "results.csv"))) == rows


def test_seeds_give_one_row_per_run_and_mean_std_per_cell(data, tmp_path):
    out = tmp_path / "d"
    args = ("experiment", "dropout", data, "--out", out, *EXP_ARGS, "--dropouts", "0,0.5", "--seeds", 3, "--seed", 7)
    run(*args)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["dropout"], r["seed"]) for r in rows] == [(d, s) for s in ("7", "8", "9") for d in ("0.0", "0.5")]
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [(r["dropout"], r["n"]) for r in summary] == [("0.0", "3"), ("0.5", "3")]
    for cell in summary:
        vals = [float(r["val_top1_error"]) for r in rows if r["dropout"] == cell["dropout"]]
        assert float(cell["val_top1_error_mean"]) == pytest.approx(statistics.mean(vals))
        assert float(cell["val_top1_error_std"]) == pytest.approx(statistics.stdev(vals))
    md = (out / "results.md").read_text()
    assert "mean ± std over 3 seeds" in md and md.count(" ± ") >= 2 * 4
    assert len(os.listdir(out / "runs")) == 6
    # more seeds later: only the new ones train
    again = run(*args[:-4], "--seeds", 4, "--seed", 7)
    assert again.count("finished earlier, kept") == 6 and again.count("training 1 epochs") == 2


def test_summary_of_cells_by_hand():
    from imgprep.trainer.experiments import summarize_cells

    rows = [
        {"p": 0, "seed": 0, "err": 0.2, "ep": 3},
        {"p": 0, "seed": 1, "err": 0.4, "ep": None},
        {"p": 1, "seed": 0, "err": 0.5, "ep": 2},
    ]
    s = summarize_cells(rows, ["p"], ["err", "ep"])
    assert s[0]["n"] == 2 and s[0]["err_mean"] == pytest.approx(0.3) and s[0]["err_std"] == pytest.approx(0.1414, 1e-3)
    assert s[0]["ep_mean"] == 3 and s[0]["ep_std"] is None and s[0]["ep_n"] == 1  # one run never reached it
    assert s[1] == {"p": 1, "n": 1, "err_mean": 0.5, "err_std": None, "ep_mean": 2.0, "ep_std": None}


def test_same_seed_same_table(data, tmp_path):
    for d in ("a", "b"):
        run("experiment", "dropout", data, "--out", tmp_path / d, *EXP_ARGS, "--dropouts", "0,0.5", "--seeds", 2)
    for f in ("results.csv", "summary.csv", "results.md"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()


def test_bench_chart_groups_and_machine_line(tmp_path):
    from imgprep.report import bench_chart, machine_line

    assert machine_line({"cores": 2, "processor": "x86_64", "gpus": None}) == "2 cores (x86_64), no GPU"
    assert (
        machine_line({"cores": 16, "processor": "x86_64", "gpus": ["NVIDIA H200"]}) == "16 cores (x86_64), NVIDIA H200"
    )
    zen5 = {"vendor": "AuthenticAMD", "family": "26", "model": "2", "extensions": ["avx2", "avx512f", "avx512_bf16"]}
    assert (
        machine_line({"cores": 2, "cpu_model": "AMD EPYC", "cpu": zen5, "gpus": None})
        == "2 cores AMD EPYC (family 26 model 2; avx2, avx512f), no GPU"
    )
    rows = [
        {
            "loader": v,
            "batch_size": b,
            "workers": 2,
            "images_per_second": r,
            "min": r - 1,
            "max": r + 1,
            "vs_baseline": r / 10,
        }
        for b in (128, 256)
        for v, r in (("dali (cpu)", 40.0), ("baseline", 10.0))
    ]
    bench_chart({"benchmark": "load", "results": rows, "environment": {"cores": 2}}, str(tmp_path / "c.png"), "t")
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)


def test_a_benchmark_scripts_chart(tmp_path):
    """benchmarks/*.py --plot: one bar per variant, the ratio to the reference, the machine."""
    from imgprep.report import environment, variants_chart

    res = {"bare chain": {"median_images_per_second": 300.0, "min": 280.0, "max": 320.0}}
    res["imgprep w=1"] = {"median_images_per_second": 330.0, "min": 300.0, "max": 350.0}
    variants_chart(str(tmp_path / "c.png"), res, "bare chain", "prepare", environment())
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)
