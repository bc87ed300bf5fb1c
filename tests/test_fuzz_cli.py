"""Fuzz set of the command line: bad input ends in one line and exit status 2, never a traceback, never a
half-written output.

Every case runs ``linearlens.cli.main([...])`` in-process and asserts the exit code, that the last line
of stderr is ``linearlens <command>: error: <message>`` with the expected words, that stderr holds no
traceback, and that the output folder holds no file.  Kinds: broken checkpoints (x every command that
reads one), bad option values, non-image files, unwritable output folders, bad data sources, and
methods that fail (a failure, not a skip) or do not apply (a skip).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from linearlens.cli import main
from linearlens.explain import MethodNotApplicableError, api
from linearlens.models import create_model
from linearlens.training import save_model
from linearlens.training.checkpoint import CONFIG, WEIGHTS, write_json

MODEL_ARGS = {"width": 0.0625}


def _files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def expect_error(argv: list[str], capsys, *patterns: str, out: Path | None = None) -> str:
    """Run ``main(argv)``; assert a one-line error matching ``patterns`` and no file under ``out``."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"linearlens {argv[0]}: error: "), err
    for pattern in patterns:
        assert re.search(pattern, last), (pattern, last)
    if out is not None:
        assert _files(out) == [], "written half-way"
    return last


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("good") / "run"
    save_model(run, create_model("bcos_cifar", **MODEL_ARGS), "bcos_cifar", MODEL_ARGS, {})
    return run


def _copy_run(good: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in (CONFIG, WEIGHTS):
        (dest / name).write_bytes((good / name).read_bytes())
    return dest


def _weights_with(good: Path, change) -> bytes:
    from safetensors.torch import load_file, save

    tensors = load_file(str(good / WEIGHTS))
    change(tensors)
    return save(tensors)


# kind -> (how to break a copy of a good run, the path to pass, expected words)
def _broken(kind: str, good: Path, tmp: Path) -> tuple[Path, str]:
    run = tmp / "ckpt"
    if kind == "missing":
        return tmp / "nope", "does not exist"
    if kind == "empty-dir":
        run.mkdir()
        return run, "has no model.safetensors"
    _copy_run(good, run)
    w, c = run / WEIGHTS, run / CONFIG
    data = w.read_bytes()
    if kind == "no-config":
        c.unlink()
        return run, "config.json does not exist"
    if kind == "config-not-json":
        c.write_text("{not json")
        return run, "config.json is not valid JSON"
    if kind == "config-binary":
        c.write_bytes(b"\xff\xfe\x00garbage")
        return run, "config.json is not valid JSON"
    if kind == "config-list":
        write_json(c, [1, 2])
        return run, "does not name a model"
    if kind == "config-unknown-model":
        write_json(c, {"model": "resnet9000", "model_args": {}})
        return run, "unknown model 'resnet9000'"
    if kind == "config-bad-argument":
        write_json(c, {"model": "bcos_cifar", "model_args": {"widht": 0.0625}})
        return run, "unknown argument.*'widht'"
    if kind == "config-args-not-object":
        write_json(c, {"model": "bcos_cifar", "model_args": [0.0625]})
        return run, "model_args must be a JSON object"
    if kind == "config-shapes-differ":
        write_json(c, {"model": "bcos_cifar", "model_args": {"width": 0.125}})
        return run, "shapes do not match"
    if kind == "truncated":
        w.write_bytes(data[: len(data) // 2])
        return run, "not a readable safetensors file.*truncated or corrupt"
    if kind == "truncated-header":
        w.write_bytes(data[:5])
        return run, "not a readable safetensors file"
    if kind == "empty-file":
        w.write_bytes(b"")
        return run, "not a readable safetensors file"
    if kind == "garbage":
        w.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return run, "not a readable safetensors file"
    if kind == "torch-save-renamed":
        torch.save(create_model("bcos_cifar", **MODEL_ARGS).state_dict(), w)
        return run, "pickle.*never loads pickles"
    if kind == "raw-pickle-renamed":
        w.write_bytes(pickle.dumps({"a": 1}, protocol=2))
        return run, "pickle"
    if kind == "missing-tensor":
        w.write_bytes(_weights_with(good, lambda t: t.pop(sorted(t)[0])))
        return run, "missing"
    if kind == "extra-tensor":
        w.write_bytes(_weights_with(good, lambda t: t.update(extra=torch.zeros(2))))
        return run, "unexpected.*extra"
    if kind == "nan-weights":
        w.write_bytes(_weights_with(good, lambda t: t[sorted(t)[0]].view(-1)[0:1].fill_(float("nan"))))
        return run, "NaN or infinite"
    if kind == "pt-file":
        pt = tmp / "model.pt"
        torch.save(create_model("bcos_cifar", **MODEL_ARGS).state_dict(), pt)
        return pt, r"is a \.pt file.*run directory"
    if kind == "text-file":
        txt = tmp / "notes.txt"
        txt.write_text("hello")
        return txt, r"is a \.txt file"
    if kind == "weights-path-truncated":
        w.write_bytes(data[:100])
        return w, "not a readable safetensors file"
    raise AssertionError(kind)


CHECKPOINT_KINDS = [
    "missing", "empty-dir", "no-config", "config-not-json", "config-binary", "config-list", "config-unknown-model",
    "config-bad-argument", "config-args-not-object", "config-shapes-differ", "truncated", "truncated-header",
    "empty-file", "garbage", "torch-save-renamed", "raw-pickle-renamed", "missing-tensor", "extra-tensor",
    "nan-weights", "pt-file", "text-file", "weights-path-truncated",
]


def _checkpoint_command(command: str, checkpoint: Path, out: Path) -> list[str]:
    if command == "explain":
        return ["explain", "--checkpoint", str(checkpoint), "--out", str(out)]
    if command == "evaluate":
        return ["evaluate", "--checkpoint", str(checkpoint), "--methods", "bcos", "--grids", "1",
                "--include-misclassified", "--no-progress", "--out", str(out)]
    return ["interpret", "--checkpoint", str(checkpoint), "--per-class", "1", "--indices", "0", "--out", str(out)]


@pytest.mark.parametrize("command", ["explain", "evaluate", "interpret"])
@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_broken_checkpoint(good_run, tmp_path, capsys, kind, command):
    checkpoint, words = _broken(kind, good_run, tmp_path)
    expect_error(_checkpoint_command(command, checkpoint, tmp_path / "out"), capsys, words, out=tmp_path / "out")


BAD_OPTIONS = [
    (["train", "--b", "3"], r"--b 3\.0.*pass --temperature"),
    (["train", "--b", "0.5"], r"--b must be a number >= 1"),
    (["train", "--b", "nan"], r"--b must be a number >= 1"),
    (["train", "--temperature", "0"], r"--temperature must be > 0"),
    (["train", "--epochs", "0"], r"epochs must be >= 1"),
    (["train", "--batch-size", "0"], r"batch_size must be >= 1"),
    (["train", "--lr", "nan"], r"need 0 < lr_final <= lr"),
    (["train", "--lr", "1e-6"], r"need 0 < lr_final <= lr"),
    (["train", "--threads", "-2"], r"threads must be a positive int"),
    (["train", "--train-per-class", "0"], r"limit_per_class must be >= 1"),
    (["train", "--width", "0", "--epochs", "1", "--train-per-class", "1", "--test-per-class", "1"],
     r"width must be > 0"),
    (["train", "--max-out", "0", "--epochs", "1", "--train-per-class", "1", "--test-per-class", "1"], r"max_out"),
    (["evaluate", "--model", "bcos_cifar", "--model-args", "notjson"], r"--model-args must be a JSON object"),
    (["evaluate", "--model", "bcos_cifar", "--model-args", "[1]"], r"--model-args must be a JSON object.*list"),
    (["evaluate", "--model", "bcos_cifar", "--model-args", '{"widht": 1}'], r"--model-args.*did you mean 'width'"),
    (["evaluate", "--model", "nope"], r"unknown model 'nope'"),
    (["evaluate"], r"pass --checkpoint"),
    (["evaluate", "--model", "bcos_cifar", "--methods", "bcos,nope"], r"unknown method\(s\) nope"),
    (["evaluate", "--model", "bcos_cifar", "--methods", "bcos,bcos"], r"lists a method twice"),
    (["evaluate", "--model", "bcos_cifar", "--methods", "bcos", "--option", "bcos"], r"--option must look like"),
    (["evaluate", "--model", "bcos_cifar", "--methods", "bcos", "--option", "rise.n=1"], r"not in --methods"),
    (["evaluate", "--model", "bcos_cifar", "--model-args", '{"width": 0.0625}', "--methods", "rise", "--option",
      "rise.bogus=1", "--grids", "1", "--include-misclassified", "--limit-per-class", "1"], r"--option rise\.bogus"),
    (["evaluate", "--model", "bcos_cifar", "--model-args", '{"width": 0.0625}', "--methods", "bcos", "--smooth", "2",
      "--grids", "1", "--include-misclassified", "--limit-per-class", "1"], r"smoothing kernel must be a positive odd"),
    (["interpret", "--model", "nope"], r"unknown model 'nope'"),
    (["interpret", "--model", "bcos_cifar", "--indices", "5000"], r"--indices \[5000\] out of range"),
    (["explain"], r"give either --checkpoint"),
    (["explain", "--checkpoint", "{run}", "--indices", "-1"], r"--indices \[-1\] out of range"),
    (["explain", "--checkpoint", "{run}", "--target", "99"], r"target class 99 is out of range"),
    (["explain", "--checkpoint", "{run}", "--target", "zebra"], r"--target must be"),
    (["explain", "--checkpoint", "{run}", "--method", "nope"], r"unknown explanation method 'nope'"),
    (["explain", "--checkpoint", "{run}", "--method", "lrp", "--indices", "0"], r"LRP .*no propagation rule"),
]


@pytest.mark.parametrize("argv, words", BAD_OPTIONS, ids=[" ".join(a[:3]) + f" #{i}" for i, (a, _) in
                                                          enumerate(BAD_OPTIONS)])
def test_bad_option_value(good_run, tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    argv = [a.replace("{run}", str(good_run)) for a in argv] + ["--out", str(out)]
    if argv[0] == "train":
        argv.append("--quiet")
    expect_error(argv, capsys, words, out=out)


ARGPARSE_ERRORS = [
    ["evaluate", "--grids", "0"], ["evaluate", "--batch-size", "-1"], ["evaluate", "--images", "x"],
    ["evaluate", "--metric", "nope"], ["evaluate", "--threads", "0"], ["train", "--epochs", "one"],
    ["explain", "--indices"], ["interpret"], ["interpret", "--model", "a", "--checkpoint", "b"], ["nosuchcommand"],
]


@pytest.mark.parametrize("argv", ARGPARSE_ERRORS, ids=" ".join)
def test_malformed_command_line_is_a_usage_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err and "Traceback" not in err


def _image_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = tmp / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    data = good.read_bytes()
    files = {
        "text": (tmp / "text.png", "not a readable image"),
        "empty": (tmp / "empty.png", "not a readable image"),
        "truncated-png": (tmp / "trunc.png", "not a readable image|truncated"),
        "directory": (tmp, "does not exist|not a readable image|directory"),
        "missing": (tmp / "nope.png", "does not exist"),
        "pickle": (tmp / "pickle.jpg", "not a readable image"),
    }
    files["text"][0].write_text("hello")
    files["empty"][0].write_bytes(b"")
    files["truncated-png"][0].write_bytes(data[: len(data) // 2])
    files["pickle"][0].write_bytes(pickle.dumps([1, 2, 3]))
    return files


@pytest.mark.parametrize("kind", ["text", "empty", "truncated-png", "directory", "missing", "pickle"])
def test_non_image_file_as_image(good_run, tmp_path, capsys, kind):
    (tmp_path / "in").mkdir()
    path, words = _image_files(tmp_path / "in")[kind]
    out = tmp_path / "out"
    expect_error(["explain", "--checkpoint", str(good_run), "--image", str(path), "--out", str(out)], capsys, words,
                 out=out)


@pytest.mark.parametrize("command", ["train", "demo", "evaluate", "explain", "interpret"])
@pytest.mark.parametrize("where", ["under-a-file", "is-a-file"])
def test_unwritable_output_folder(good_run, tmp_path, capsys, command, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    out = blocker / "sub" if where == "under-a-file" else blocker
    tiny = ["--epochs", "1", "--train-per-class", "1", "--test-per-class", "1", "--width", "0.0625", "--quiet"]
    argv = {
        "train": ["train", *tiny],
        "demo": ["demo", *tiny, "--images", "1"],
        "evaluate": ["evaluate", "--checkpoint", str(good_run), "--methods", "bcos", "--grids", "1",
                     "--include-misclassified", "--limit-per-class", "1", "--no-progress"],
        "explain": ["explain", "--checkpoint", str(good_run), "--indices", "0"],
        "interpret": ["interpret", "--checkpoint", str(good_run), "--per-class", "1", "--indices", "0"],
    }[command] + ["--out", str(out)]
    expect_error(argv, capsys, r"Not a directory|File exists|not a directory")
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.parametrize("source", ["missing", "file", "empty-dir", "junk-dir"])
@pytest.mark.parametrize("command", ["train", "evaluate", "explain", "interpret"])
def test_bad_data_source(good_run, tmp_path, capsys, source, command):
    data = {"missing": tmp_path / "nope", "file": tmp_path / "file", "empty-dir": tmp_path / "empty",
            "junk-dir": tmp_path / "junk"}[source]
    if source == "file":
        data.write_text("x")
    elif source == "empty-dir":
        data.mkdir()
    elif source == "junk-dir":
        data.mkdir()
        (data / "data_batch_1").write_bytes(b"\x80\x02junk")
        (data / "readme.txt").write_text("x")
    out = tmp_path / "out"
    argv = {
        "train": ["train", "--quiet"],
        "evaluate": ["evaluate", "--checkpoint", str(good_run), "--methods", "bcos", "--no-progress"],
        "explain": ["explain", "--checkpoint", str(good_run)],
        "interpret": ["interpret", "--checkpoint", str(good_run)],
    }[command] + ["--data", str(data), "--out", str(out)]
    expect_error(argv, capsys, r"CIFAR-10|does not exist|batch")
    assert _files(out) == []


EVALUATE = ["evaluate", "--model", "bcos_cifar", "--model-args", '{"width": 0.0625}', "--grids", "1",
            "--include-misclassified", "--limit-per-class", "1", "--no-progress"]


def test_evaluate_fails_on_a_broken_method_and_writes_no_results(tmp_path, monkeypatch):
    def broken(model, x, target=None, **options):
        raise RuntimeError("a bug inside the method")

    monkeypatch.setitem(api._METHODS, "fuzz_broken", broken)
    with pytest.raises(RuntimeError, match="a bug inside the method"):  # a bug keeps its traceback
        main([*EVALUATE, "--methods", "bcos,fuzz_broken", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("error", [ValueError, TypeError])
def test_evaluate_does_not_skip_ordinary_errors(tmp_path, monkeypatch, capsys, error):
    def broken(model, x, target=None, **options):
        raise error("the method itself is wrong")

    monkeypatch.setitem(api._METHODS, "fuzz_broken", broken)
    out = tmp_path / "out"
    if error is ValueError:  # bad input of a method: a one-line failure, not a skip
        expect_error([*EVALUATE, "--methods", "fuzz_broken", "--out", str(out)], capsys, "the method itself is wrong")
    else:
        with pytest.raises(TypeError):
            main([*EVALUATE, "--methods", "fuzz_broken", "--out", str(out)])
    assert not (out / "results.json").exists()


def test_evaluate_skips_only_a_method_that_does_not_apply(tmp_path, monkeypatch, capsys):
    def not_applicable(model, x, target=None, **options):
        raise MethodNotApplicableError("this model has no layer the method needs")

    monkeypatch.setitem(api._METHODS, "fuzz_na", not_applicable)
    out = tmp_path / "out"
    assert main([*EVALUATE, "--methods", "bcos,fuzz_na", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "fuzz_na: skipped (this model has no layer the method needs)" in captured.err
    import json

    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["fuzz_na"] == {"error": "this model has no layer the method needs"}
    assert "mean" in results["methods"]["bcos"]
