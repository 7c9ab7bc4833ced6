"""Reports read Results and never measure: every format, from Results built here."""

import csv
import io
import json

import pytest
from matplotlib.image import imread

from quantbench.report import ResultList, load_results, make_report, render, save_plots
from quantbench.report.export import md_escape
from quantbench.report.html import render_html
from quantbench.report.plots import pareto_front, quality_chart
from quantbench.report.table import summary
from quantbench.results import Result, RunSpec, append_result

XSS = "<script>alert(1)</script>"
PRECISIONS = ("fp32", "fp16", "int8", "nf4", "fp4")
MIB = 2**20


def measured(precision, weights_mib, ppl, decode_ms, model="smollm2-135m", **extra):
    metrics = {
        "weights_footprint_bytes": weights_mib * MIB,
        "peak_generate_bytes_b1": weights_mib * MIB * 1.1,
        "peak_generate_bytes_b4": weights_mib * MIB * 1.3,
        "prefill_ms_p128": decode_ms * 3, "prefill_ms_p128_p10": decode_ms * 2.8,
        "prefill_ms_p128_p90": decode_ms * 3.3,
        "decode_ms_per_token": decode_ms, "decode_ms_per_token_p10": decode_ms * 0.9,
        "decode_ms_per_token_p90": decode_ms * 1.2,
        "tokens_per_s_b1": 1000 / decode_ms, "tokens_per_s_b4": 3200 / decode_ms,
        "decode_ms_per_token_b1": decode_ms, "decode_ms_per_token_b4": decode_ms * 1.25,
        "perplexity": ppl, "ppl_ratio": ppl / 12.0, "kl_mean": 0.01, "kl_p99": 0.1,
        "top1_agreement": 0.95, **extra,
    }
    return Result(RunSpec(model, precision), metrics=metrics, device="cpu",
                  info={"inspection": {"parameters": 134_515_008}},
                  versions={"torch": "2.13.0", "bitsandbytes": "0.50.2"},
                  timestamp="2025-01-02T03:04:05+00:00")


def sample_results(model="smollm2-135m"):
    """Five measured precisions, random-weight runs (one OOM), a finetune and junk metrics."""
    real = [measured(p, w, ppl, ms, model=model) for p, w, ppl, ms in (
        ("fp32", 540, 12.0, 30.0), ("fp16", 270, 12.0, 60.0), ("int8", 160, 12.3, 90.0),
        ("nf4", 110, 13.1, 50.0), ("fp4", 110, 14.0, 51.0))]
    random = [
        Result(RunSpec("tinyllama-1.1b-arch", "fp16"), random_weights=True, device="cpu",
               metrics={"weights_footprint_bytes": 2.05 * 2**30, "perplexity": 31000.0,
                        "decode_ms_per_token": None, "tokens_per_s_b1": float("nan")},
               info={"inspection": {"parameters": 1_100_048_384}}),
        Result(RunSpec("tinyllama-1.1b-arch", "int8"), random_weights=True,
               error="out of memory\nCUDA out of memory. Tried to allocate 2.00 GiB"),
    ]
    finetune = Result(RunSpec(model, "nf4", kind="finetune"), metrics={"train_loss": 2.1,
                                                                      "peak_train_bytes": 9e8})
    return [*real, *random, finetune]


def test_every_precision_appears_in_every_format():
    results = sample_results()
    for fmt in ("table", "md", "csv", "json"):
        text = render(results, fmt)
        for precision in PRECISIONS:
            assert precision in text, (fmt, precision)
        assert "tinyllama-1.1b-arch" in text and "out of memory" in text


def test_summary_is_one_row_per_config_with_spread_and_varying_settings():
    results = sample_results()[:5]
    table = summary(results)
    assert [r.cells[1] for r in table.rows] == list(PRECISIONS)
    assert "decode ms/token" in table.headers and "tok/s b4" in table.headers
    decode = table.headers.index("decode ms/token")
    assert table.rows[2].cells[decode] == "90 [81-108]"
    assert "int8_threshold" not in table.headers  # nothing varies: not shown
    variant = measured("int8", 160, 12.3, 90.0)
    variant.spec.options["int8_threshold"] = 0.0
    table = summary([*results, variant])
    assert "int8_threshold" in table.headers
    assert len(table.rows) == 6


def test_calibrated_rows_show_their_calibration_cost():
    """A calibrated row's time and peak (GPU allocator, or RSS on the CPU) get a column; a table
    without calibrated rows has none."""
    results = sample_results()[:3]
    assert "calibration" not in summary(results).headers
    gpu = measured("gptq-4bit", 108, 14.0, 40.0, calibration_seconds=10.7, calibration_peak_bytes=88 * MIB)
    cpu = measured("awq-4bit", 108, 13.0, 40.0, calibration_seconds=679.0, calibration_peak_rss_bytes=1830 * MIB)
    table = summary([*results, gpu, cpu])
    column = table.headers.index("calibration")
    assert [row.cells[column] for row in table.rows] == ["-", "-", "-", "10.7 s, 88.0 MiB", "679 s, 1.79 GiB"]


def test_random_weights_never_show_quality_and_are_marked():
    results = sample_results()
    table = summary(results)
    row = next(r for r in table.rows if r.random and r.result.ok)
    ppl = table.headers.index("ppl")
    assert row.cells[ppl] == "n/a" and "31000" not in render(results, "md").split("Other runs")[0]
    md = render(results, "md")
    assert "tinyllama-1.1b-arch ⚠" in md and "random weights" in md


def test_markdown_escapes_input_and_keeps_the_table_shape():
    results = [measured("nf4", 110, 13.0, 50.0, model=f"evil|{XSS}")]
    md = render(results, "md")
    assert "<script>" not in md and "&lt;script>" in md
    header, _, row = [line for line in md.splitlines() if line.startswith("|")][:3]
    assert header.count(" | ") == row.count(" | ")  # the '|' in the id did not add a column
    assert md_escape("a|b\nc") == "a\\|b c"


def test_rich_table_shows_markup_in_model_ids_as_text():
    text = render([measured("nf4", 110, 13.0, 50.0, model="[bold red]x[/bold red]")], "table")
    assert "[bold red]x[/bold red]" in text


def test_csv_has_one_raw_row_per_result_and_json_reads_back():
    results = sample_results()
    rows = list(csv.DictReader(io.StringIO(render(results, "csv"))))
    assert len(rows) == len(results)
    assert float(rows[2]["weights_footprint_bytes"]) == 160 * MIB
    assert rows[6]["error"].startswith("out of memory") and rows[6]["decode_ms_per_token"] == ""
    payload = json.loads(render(results, "json"))
    back = [Result.from_dict(d) for d in payload["results"]]
    assert [r.spec.precision for r in back] == [r.spec.precision for r in results]
    statuses = {c["name"]: c["status"] for c in payload["checks"]["smollm2-135m"]}
    assert statuses["int8/fp16 weights ratio"] == "n/a"  # the 1.1B lab band: not for 0.13B
    # 160 / 270 MiB is not SmolLM2's layout (int8 keeps its 21 % tied embedding in fp32 on CPU)
    assert statuses["int8/fp16 weights vs estimate"] == "fail"
    assert statuses["fp16 weights for a ~1.1B model"] == "n/a"


def test_plots_are_real_pngs_and_survive_odd_inputs(tmp_path):
    written = save_plots(sample_results(model="odd $model$ \\frac"), tmp_path)
    assert sorted(p.name for p in written) == ["decode_ms_per_token.png", "latency_vs_batch.png",
                                               "memory.png", "quality_vs_memory.png"]
    height, width, _ = imread(written[0]).shape
    assert width > 600 and height > 400
    only_errors = [Result(RunSpec("m", "fp16"), error="out of memory")]
    assert save_plots(only_errors, tmp_path / "none") == []
    random_only = [r for r in sample_results() if r.random_weights]
    assert quality_chart(random_only) is None  # random weights are never put on a quality axis


def test_pareto_front_keeps_only_undominated_points():
    points = [(540, 1.0), (270, 1.0), (160, 1.02), (110, 1.09), (110, 1.17), (300, 1.5)]
    assert pareto_front(points) == [3, 2, 1]


def test_result_list_renders_in_a_notebook():
    results = ResultList(sample_results())
    html = results._repr_html_()
    assert html.startswith('<div class="quantbench">') and "<table>" in html
    assert all(p in html for p in PRECISIONS) and "PASS" in html
    assert "body" not in html.split("</style>")[0]  # the CSS is scoped to the cell
    assert "| nf4 |" in results._repr_markdown_()
    assert isinstance(results, list) and len(results.ok()) == len(results) - 1


def test_load_results_keeps_newest_per_spec_and_reports_corrupt_lines(tmp_path):
    path = tmp_path / "results.jsonl"
    old, new = measured("nf4", 110, 99.0, 50.0), measured("nf4", 110, 13.0, 50.0)
    append_result(path, old)
    with path.open("a") as handle:
        handle.write('{"spec": {"model": \n')
    append_result(path, new)
    results, problems = load_results(path)
    assert len(results) == 1 and results[0].metrics["perplexity"] == 13.0
    assert len(problems) == 1 and ":2:" in problems[0]


@pytest.fixture
def results_file(tmp_path):
    path = tmp_path / "results.jsonl"
    for result in sample_results():
        append_result(path, result)
    with path.open("a") as handle:
        handle.write("not json at all\n")
    return path


def test_cli_writes_every_output_and_skips_a_corrupt_line(cli, results_file, tmp_path):
    code, out, err = cli("report", str(results_file), "--format", "md",
                         "--html", str(tmp_path / "r.html"), "--plots", str(tmp_path / "plots"))
    assert code == 0, err
    assert "| nf4 |" in out and "Checks: smollm2" in out
    skipped = [line for line in err.splitlines() if "unreadable" in line]
    assert len(skipped) == 1 and "Traceback" not in err
    assert (tmp_path / "r.html").stat().st_size > 10_000
    assert len(list((tmp_path / "plots").glob("*.png"))) == 4
    code, _, err = cli("report", str(tmp_path / "nope.jsonl"))
    assert code == 2 and err.startswith("error: ")
    assert "does not exist" in err and "Traceback" not in err


def test_make_report_writes_text_output_and_rejects_unknown_formats(results_file, tmp_path):
    report = make_report(results_file, output=tmp_path / "out" / "r.csv", fmt="csv")
    assert report.written == [tmp_path / "out" / "r.csv"] and len(report.problems) == 1
    assert (tmp_path / "out" / "r.csv").read_text().startswith("model,precision,kind")
    from quantbench.errors import QuantbenchError

    with pytest.raises(QuantbenchError, match="unknown report format"):
        make_report(results_file, fmt="xlsx")


def test_example_notebook_is_valid_and_uses_the_public_api():
    import ast
    from pathlib import Path

    import quantbench.report

    notebook = json.loads((Path(__file__).parents[1] / "examples/classic_lab.ipynb").read_text())
    assert notebook["nbformat"] == 4 and notebook["cells"]
    code = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    # committed with the outputs of a real run (examples/run_notebook.py), none of them an error
    assert all(c.get("outputs") and c.get("execution_count") for c in cells[:-1])
    outputs = [o for c in cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    printed = "".join("".join(o.get("text", "")) for o in outputs)
    assert "PASS  nf4/fp16 weights vs estimate" in printed and "FAIL" not in printed
    for source in code:
        tree = ast.parse(source)  # every code cell is valid Python
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "quantbench.report":
                assert all(hasattr(quantbench.report, a.name) for a in node.names)
    joined = "\n".join(code)
    assert "quantbench.load(" in joined and "quantbench.run(" in joined
    assert all(f'"{p}"' in joined for p in ("fp16", "int8", "nf4"))


def test_records_with_odd_shapes_render_everywhere(tmp_path):
    """Hand-edited or older files: nulls where dicts belong, text where numbers belong."""
    odd = Result(RunSpec(None, "nf4", options=None, workload=None), metrics=None, info=None,
                 versions=None, random_weights=True)
    texty = measured("int8", 160, 12.3, 90.0)
    texty.metrics.update(weights_footprint_bytes="lots", decode_ms_per_token_p10=500.0)
    results = [*sample_results(), odd, texty]
    for fmt in ("table", "md", "csv", "json"):
        assert "nf4" in render(results, fmt)
    assert ResultList(results)._repr_html_() and "<td>nf4</td>" in render_html(results)
    assert len(save_plots(results, tmp_path)) == 4


def test_batch_out_of_memory_and_bandwidth_share_are_shown():
    gpu = measured("nf4", 110, 13.0, 50.0, bandwidth_limit_ms_per_token=20.0,
                   per_device_allocated_bytes={"cuda:0": 123})
    gpu.info["batch_16"] = "out of memory"
    table = summary([gpu, measured("fp16", 270, 12.0, 60.0)])
    row = table.rows[0].cells
    assert row[table.headers.index("% of bw limit")] == "40%"
    assert row[-1] == "ok; out of memory at b16"
    assert table.rows[1].cells[table.headers.index("% of bw limit")] == "-"
    assert '"{""cuda:0"": 123}"' in render([gpu], "csv")  # dict metrics stay JSON in CSV
