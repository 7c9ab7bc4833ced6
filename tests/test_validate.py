"""Bad input fails in the parent: one line, exit 2, no worker started, no results file touched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantbench.results import Result, RunSpec, append_result

# Workers are never reached: every case below fails before one would start.
FAST = ["--no-latency", "--max-ppl-tokens", "64", "--ppl-context", "32", "--ppl-stride", "16"]


@pytest.fixture
def results(tmp_path) -> Path:
    """A valid results file holding one Result; every refused command must leave it as it is."""
    path = tmp_path / "results.jsonl"
    append_result(path, Result(RunSpec("smollm2-135m", "fp32"), metrics={"perplexity": 9.0}))
    return path


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def refused(cli, *args: str) -> str:
    code, _, err = cli(*args)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


RUN_CASES = {
    # text files for perplexity
    "missing text": (["--text-file", "{tmp}/does-not-exist.txt"], "does not exist"),
    "empty text": (["--text-file", "{empty}"], "is empty"),
    "whitespace text": (["--text-file", "{blank}"], "is empty"),
    "binary text": (["--text-file", "{binary}"], "is binary"),
    "latin-1 text": (["--text-file", "{latin1}"], "not UTF-8"),
    "folder as text": (["--text-file", "{tmp}"], "is not a file"),
    "one token": (["--text-file", "{one}"], "fewer than two tokens"),
    # precision lists
    "empty precisions": (["-p", ""], "no precision given"),
    "only commas": (["-p", ",,"], "no precision given"),
    "hole in list": (["-p", "fp16,,nf4"], "empty entry"),
    "duplicate": (["-p", "fp16,int8,fp16"], "fp16 listed more than once"),
    "duplicate by case": (["-p", "nf4,NF4"], "nf4 listed more than once"),
    "unknown": (["-p", "fp16,nf5"], "unknown precision 'nf5'"),
    # numbers and sizes
    "zero repeats": (["--repeats", "0"], "--repeats must be at least 1"),
    "negative warmup": (["--warmup", "-1"], "--warmup must be at least 0"),
    "one new token": (["--new-tokens", "1"], "--new-tokens must be at least 2"),
    "zero batch": (["--batch-sizes", "1,0"], "--batch-sizes must be positive"),
    "negative prompt": (["--prompt-lengths", "-5"], "--prompt-lengths must be positive"),
    "not a number": (["--repeats", "many"], "--repeats"),
    "tiny context": (["--ppl-context", "1"], "--ppl-context must be at least 2"),
    "stride past context": (["--ppl-stride", "64"], "--ppl-stride must be between 1 and"),
    "zero ppl tokens": (["--max-ppl-tokens", "0"], "--max-ppl-tokens must be at least 2"),
    "unknown engine": (["--engine", "turbo"], "unknown engine 'turbo'"),
    "unknown dtype": (["--compute-dtype", "fp8"], "unknown compute dtype 'fp8'"),
    "bad max memory": (["--max-memory", "0=lots"], "bad --max-memory entry"),
    "missing adapter": (["--adapter", "{tmp}/no-adapter"], "adapter_config.json"),
    "unknown option": (["--bogus"], "No such option: --bogus"),
}


@pytest.mark.parametrize("case", RUN_CASES, ids=list(RUN_CASES))
def test_bad_run_input_is_one_line_and_exit_2_with_results_unchanged(case, cli, tmp_path, results):
    files = {
        "tmp": str(tmp_path),
        "empty": write(tmp_path, "empty.txt", b""),
        "blank": write(tmp_path, "blank.txt", b" \n\t\n"),
        "binary": write(tmp_path, "binary.txt", bytes(range(256)) * 4),
        "latin1": write(tmp_path, "latin1.txt", "café au lait, crème brûlée".encode("latin-1")),
        "one": write(tmp_path, "one.txt", b"hello"),
    }
    extra, expected = RUN_CASES[case]
    before = results.read_bytes()
    line = refused(cli, "run", "smollm2-135m", "-o", str(results), *FAST,
                   *[arg.format(**files) for arg in extra])
    assert expected in line
    assert results.read_bytes() == before
    assert not results.with_name(results.name + ".logs").exists()  # no worker started


def test_issue_example_missing_text_file_writes_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = refused(cli, "run", "smollm2-135m", "-p", "fp32", "--text-file", "does-not-exist.txt")
    assert "text file 'does-not-exist.txt' does not exist" in line
    assert not (tmp_path / "results.jsonl").exists()


RESULTS_CASES = {
    "folder": (lambda tmp: tmp, "is a folder"),
    "under a file": (lambda tmp: write(tmp, "plain.txt", b"x") + "/r.jsonl", "is a file"),
    "foreign jsonl": (lambda tmp: write(tmp, "other.jsonl", b'{"name": "x", "score": 1}\n[1, 2]\n'),
                      "holds no quantbench Result"),
    "binary": (lambda tmp: write(tmp, "bin.jsonl", b"\x00\x01\x02" * 50), "binary"),
    "not utf-8": (lambda tmp: write(tmp, "latin.jsonl", "é\n".encode("latin-1")), "not UTF-8"),
}


@pytest.mark.parametrize("case", RESULTS_CASES, ids=list(RESULTS_CASES))
def test_results_file_that_cannot_be_a_results_file_is_refused(case, cli, tmp_path):
    make, expected = RESULTS_CASES[case]
    path = str(make(tmp_path))
    before = Path(path).read_bytes() if Path(path).is_file() else None
    assert expected in refused(cli, "run", "smollm2-135m", "-o", path, *FAST)
    if before is not None:
        assert Path(path).read_bytes() == before


def test_truncated_results_file_is_refused_for_appending_but_readable(cli, results):
    with results.open("a") as handle:
        handle.write('{"spec": {"model": "smollm2-135m", "prec')  # a write cut short
    before = results.read_bytes()
    assert "ends in a truncated line (2)" in refused(cli, "run", "smollm2-135m", "-o", str(results), *FAST)
    assert results.read_bytes() == before
    code, out, err = cli("report", str(results), "--format", "csv")  # reading skips the line
    assert code == 0 and "fp32" in out and "skipped unreadable line" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_results_file_is_refused(cli, results):
    results.chmod(0)
    try:
        assert "results file" in refused(cli, "report", str(results))
    finally:
        results.chmod(0o644)


@pytest.mark.parametrize("model,expected", [
    ("/nonexistent/dir", "neither an existing folder nor a Hugging Face id"),
    ("./not-here", "neither an existing folder nor a Hugging Face id"),
    ("a/b/c", "neither an existing folder nor a Hugging Face id"),
    ("", "no model given"),
])
def test_model_that_is_neither_folder_nor_hub_id(cli, model, expected, results):
    before = results.read_bytes()
    for command in (["estimate", model, "--precision", "nf4"], ["run", model, "-o", str(results)],
                    ["inspect", model], ["recommend", model, "--vram", "8GiB"]):
        assert expected in refused(cli, *command)
    assert results.read_bytes() == before


def test_model_given_as_a_file_or_a_folder_without_config(cli, tmp_path):
    assert "no config.json" in refused(cli, "estimate", str(tmp_path))
    assert "is a file" in refused(cli, "estimate", write(tmp_path, "config.json", b"{}"))


@pytest.mark.parametrize("args,expected", [
    (["--precision", ""], "no precision given"),
    (["--precision", "int8,int8"], "int8 listed more than once"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--seq-len", "-1"], "--seq-len must be at least 1"),
    (["--gpus", "0"], "--gpus must be at least 1"),
    (["--gpu-memory", "0GiB", "--gpus", "2"], "size must be positive"),
    (["--gpu-memory", "lots", "--gpus", "2"], "bad size 'lots'"),
])
def test_bad_estimate_input(cli, args, expected):
    assert expected in refused(cli, "estimate", "smollm2-135m", *args)


def test_bad_recommend_and_report_input(cli, tmp_path, results):
    assert "size must be positive" in refused(cli, "recommend", "smollm2-135m", "--vram", "0GiB")
    assert "bad size '-8GiB'" in refused(cli, "recommend", "smollm2-135m", "--vram", "-8GiB")
    foreign = write(tmp_path, "foreign.jsonl", b'{"loss": 1.0}\n')
    assert "holds no quantbench Result" in refused(cli, "recommend", "smollm2-135m", "--vram", "8GiB",
                                                   "--results", foreign)
    assert "holds no quantbench Result" in refused(cli, "report", foreign)
    assert "is empty" in refused(cli, "report", write(tmp_path, "empty.jsonl", b""))
    assert "is a folder" in refused(cli, "report", str(tmp_path))
    assert "is a folder" in refused(cli, "report", str(results), "--html", str(tmp_path))
    assert "is a file" in refused(cli, "report", str(results), "--plots", str(results))


def test_bad_finetune_and_optimizers_input(cli, tmp_path, results):
    out = str(tmp_path / "adapter")
    assert "does not exist" in refused(cli, "finetune", "smollm2-135m", "--data", "nope.txt", "-o", out)
    assert "is binary" in refused(cli, "finetune", "smollm2-135m", "-o", out,
                                  "--data", write(tmp_path, "d.bin", b"\0" * 10))
    assert "cannot be created" in refused(cli, "finetune", "smollm2-135m", "-o", str(results) + "/x")
    assert "--steps must be at least 1" in refused(cli, "optimizers", "smollm2-135m", "--steps", "0")
    assert "is a folder" in refused(cli, "optimizers", "smollm2-135m", "--results", str(tmp_path))


def test_validation_functions_accept_good_input(tmp_path):
    from quantbench import validate

    text = tmp_path / "t.txt"
    text.write_text("Two words é\n", encoding="utf-8")
    assert validate.text_file(text) == "Two words é\n"
    validate.enough_tokens("Two words", None, "text")
    assert validate.precision_names(" fp16, NF4 ") == ["fp16", "nf4"]
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for name in ("smollm2-135m", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "gpt2", str(folder)):
        validate.model_name(name)
    validate.results_to_append(tmp_path / "new" / "results.jsonl")  # absent: created later


def test_results_file_that_cannot_be_read_is_refused(cli, results, monkeypatch):
    """As a file without read permission answers (root reads everything, so it is simulated)."""
    real = Path.read_bytes

    def read_bytes(self):
        if self == results:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    for args in (["report", str(results)], ["run", "smollm2-135m", "-o", str(results), *FAST]):
        line = refused(cli, *args)
        assert "cannot read results file" in line and "Permission denied" in line


def test_bad_dataset_spec_fails_in_the_parent(cli, results):
    before = results.read_bytes()
    assert "bad --dataset" in refused(cli, "run", "smollm2-135m", "-o", str(results), "--dataset", "a:b:c:d")
    assert results.read_bytes() == before
