"""One command-line convention for every job (pipelines/cli.py): a bad flag, a bad config and a
missing path each end in ONE line on stderr and exit code 2, before Ray or a model starts; an
internal error exits 1 with its traceback; --help shows defaults and the exit codes. The jobs
run as `python jobs/X.py` in a subprocess, exactly as a user (or `ray job submit`) runs them."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import LockHeldError, UsageError, run_job

REPO = Path(__file__).resolve().parents[1]
JOBS = ["adapt", "embed_corpus", "search", "evaluate", "demo", "serve"]


def _job(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}  # as Ray's --working-dir does
    return subprocess.run([sys.executable, str(REPO / "jobs" / f"{name}.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _bad_cases(tmp: Path) -> dict[str, list[tuple[str, list[str], str]]]:
    """job -> [(case, arguments, a word the one-line message must hold)]."""
    corpus = tmp / "corpus.txt"
    corpus.write_text("A line of text.\n")
    (tmp / "adapt.yaml").write_text("profile: x\nmntp: {stepz: 3}\n")
    (tmp / "embed.yaml").write_text(f"input: [{corpus}]\noutput: {tmp / 'out'}\nbatch_sizee: 3\n")
    return {
        "adapt": [("flag", ["--corpus", str(corpus), "--output", "o", "--bogus"], "--bogus"),
                  ("path", ["--corpus", str(tmp / "missing.txt"), "--output", "o"], "missing.txt"),
                  ("config", ["--corpus", str(corpus), "--output", "o", "--config", str(tmp / "adapt.yaml")], "stepz")],
        "embed_corpus": [("flag", ["--inputt", "x"], "--inputt"),
                         ("path", ["--input", str(tmp / "missing"), "--output", str(tmp / "out")], "missing"),
                         ("config", ["--config", str(tmp / "embed.yaml")], "batch_sizee")],
        "search": [("flag", ["--index", "x", "--query", "q", "--top", "3"], "--top"),
                   ("path", ["--index", str(tmp / "no-index"), "--query", "q"], "no-index"),
                   ("config", ["--index", "x", "--query", "q", "--k", "0"], "--k")],
        "evaluate": [("flag", ["--modell", "x"], "--modell"),
                     ("path", ["--tasks", "stsb", "--stsb", str(tmp / "no-stsb")], "no-stsb"),
                     ("config", ["--tasks", "stsb,mteb"], "mteb")],
        "serve": [("flag", ["--index", "x", "--prot", "80"], "--prot"),
                  ("path", ["--index", str(tmp / "no-index")], "no-index"),
                  ("config", ["--index", str(tmp), "--port", "0"], "--port")],
        "demo": [("flag", ["--skip"], "--skip"),
                 ("path", ["--model", str(tmp / "no-encoder")], "no-encoder"),
                 ("config", ["--max-docs", "0"], "--max-docs")],
    }


@pytest.mark.parametrize("name", JOBS)
def test_bad_flag_config_and_path_exit_2_with_one_line(name, tmp_path):
    for case, args, word in _bad_cases(tmp_path)[name]:
        done = _job(name, *args, cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (case, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and len(lines) == 1, (case, done.stderr[-2000:])
        assert "error:" in lines[0] and word in lines[0], (case, lines)
    assert not (tmp_path / "out").exists() and not (tmp_path / "demo_out").exists()  # nothing started


@pytest.mark.parametrize("name", JOBS)
def test_help_shows_defaults_and_exit_codes(name, tmp_path):
    done = _job(name, "--help", cwd=tmp_path)
    assert done.returncode == 0 and "exit codes:" in done.stdout and "(default: " in done.stdout
    assert "  2  bad" in done.stdout and "  1  internal error" in done.stdout


def test_console_scripts_point_at_each_jobs_main():
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"', section, re.MULTILINE))  # no tomllib on Python 3.10
    assert set(scripts) >= {"l2v-adapt", "l2v-embed", "l2v-search", "l2v-evaluate", "l2v-serve"}
    import importlib

    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_run_job_maps_errors_to_exit_codes(capsys):
    from pydantic import BaseModel, ConfigDict

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int = 1

    def fails(error):
        def run(argv):
            raise error
        return run

    assert run_job(lambda argv: None) == 0 and run_job(lambda argv: 5) == 5
    assert run_job(fails(UsageError("give --x\n  (twice)"))) == 2
    assert capsys.readouterr().err.strip().endswith("error: give --x (twice)")
    assert run_job(lambda argv: Settings(size="big", colour=1)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "size: " in err and "colour: Extra inputs are not permitted" in err
    assert run_job(fails(LockHeldError("held by pid 7"))) == 3
    assert run_job(fails(ZeroDivisionError("boom"))) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].endswith("internal error: ZeroDivisionError: boom "
                                                                        "(the traceback above shows where)")
