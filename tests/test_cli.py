"""Entry points: every stage has --help; bad config fails fast with exit 2 before Spark starts."""
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

JOBS = {"generate": "generate.py", "features": "build_features.py", "folds": "make_folds.py", "demo": "demo.py",
        "train-base": "train_base_models.py", "kdef-study": "kdef_study.py", "kaml-study": "kaml_study.py",
        "hm3-study": "hm3_study.py", "meta-features": "meta_features.py",
        "fusion": "fusion.py", "distill": "distill.py", "score": "score.py", "lead-list": "lead_list.py",
        "foundation": "foundation.py", "pipeline": "run_pipeline.py", "report": "report.py", "monitor": "monitor.py",
        "monitor-demo": "monitor_demo.py", "reproduce": "reproduce.py",
        "backtest": "backtest.py", "promote": "promote.py", "tune": "tune.py"}


def test_every_stage_has_a_job():
    from remedi_spark.cli import DESCRIPTIONS

    assert set(JOBS) == set(DESCRIPTIONS)
    assert all((REPO / "jobs" / f).exists() for f in JOBS.values())


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("stage", sorted(JOBS))
def test_every_stage_has_help(stage):
    for cmd in (["-m", "remedi_spark", stage, "--help"], [f"jobs/{JOBS[stage]}", "--help"]):
        proc = _run(*cmd)
        assert proc.returncode == 0, proc.stderr
        assert "--conf" in proc.stdout and "--set" in proc.stdout


def test_bad_config_fails_fast_with_the_key_named():
    proc = _run("-m", "remedi_spark", "generate", "--set", "synthetic.n_user=10")
    assert proc.returncode == 2
    assert "unknown key synthetic.n_user" in proc.stderr


def test_bad_month_spec_is_an_argument_error():
    proc = _run("-m", "remedi_spark", "features", "--months", "2024-13")
    assert proc.returncode == 2 and "invalid month" in proc.stderr


@pytest.mark.parametrize("stage", ["score", "lead-list", "monitor", "promote"])
def test_a_bad_month_is_an_argument_error_before_spark_starts(stage):
    from remedi_spark.cli import build_parser

    proc = _run("-m", "remedi_spark", stage, "--month", "2025-13")
    assert proc.returncode == 2 and "invalid month '2025-13'" in proc.stderr and "Traceback" not in proc.stderr
    assert build_parser().parse_args([stage, "--month", ""]).month is None  # a scheduler's empty parameter


# --- bad input: exit 2 with one line naming the key, before Spark starts and before anything is written ---

_NO_SESSION = ("import sys; from remedi_spark.cli import main; rc = main(sys.argv[1:]); "
               "from pyspark import SparkContext; print(rc, SparkContext._active_spark_context)")


@pytest.mark.parametrize("args, message", [
    (["--month", "2025-13"], "argument --month: invalid month '2025-13': expected 'YYYY-MM'"),
    (["--set", "fusion.meta_model.epochs=abc"], "fusion.meta_model.epochs: expected a positive integer, got 'abc'"),
    (["--set", "lead_list.k=-5"], "lead_list.k: expected a count of leads (a positive integer) or a fraction"),
    (["--set", "synthetic.start_month=2024-13"], "synthetic.start_month: expected a month 'YYYY-MM', got '2024-13'"),
])
def test_bad_input_is_one_line_and_exit_2_before_spark_starts(tmp_path, args, message):
    root = tmp_path / "tables"
    proc = _run("-c", _NO_SESSION, "score", "--conf", "conf/demo.yaml", "--set", f"tables.root={root}", *args)
    assert proc.returncode == 2 or proc.stdout.strip() == "2 None", (proc.stdout, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "started" not in proc.stderr and "full log" not in proc.stderr  # no stage run, no log file
    assert not root.exists()  # nothing written
    if proc.returncode == 0:  # main returned (argparse exits 2 itself): no Spark session was created
        assert proc.stdout.strip() == "2 None"


def test_the_module_entry_point_exits_2_on_a_bad_set(tmp_path):
    proc = _run("-m", "remedi_spark", "score", "--conf", "conf/demo.yaml", "--set", f"tables.root={tmp_path / 't'}",
                "--set", "fusion.meta_model.epochs=abc")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "remedi_spark score: fusion.meta_model.epochs: expected a positive integer, got 'abc'"


# --- the console: a log file per run, chatter there, progress lines -----------------------------------

def test_log_path_under_the_table_root(tmp_path):
    from remedi_spark.cli import log_path

    path = log_path(str(tmp_path), "train-base", now=0)
    assert path == tmp_path.resolve() / "logs" / "train-base-19700101T000000.log"
    assert str(log_path("dbfs:/remedi/demo", "score", now=0)) == "/dbfs/remedi/demo/logs/score-19700101T000000.log"
    assert "remedi-logs" in str(log_path("s3a://bucket/remedi", "score"))  # no local file on an object store


def test_console_sends_chatter_to_the_log_and_keeps_the_console_readable(tmp_path, capsys):
    import logging
    import warnings

    from remedi_spark.cli import console

    path = tmp_path / "logs" / "x.log"
    stdout, stderr = sys.stdout, sys.stderr
    with warnings.catch_warnings(), console(path, verbose=False):
        warnings.simplefilter("always")  # pytest's config ignores FutureWarning
        print("result line")
        print("[remedi] progress line", file=sys.stderr)
        warnings.warn("pyarrow says something", FutureWarning)
        logging.getLogger("py4j.clientserver").info("Closing down clientserver connection")
        logging.getLogger("some.lib").error("a real error")
    assert (sys.stdout, sys.stderr) == (stdout, stderr)  # put back
    out, err = capsys.readouterr()
    assert out == "result line\n"
    assert "[remedi] progress line" in err and "a real error" in err
    assert "FutureWarning" not in err and "Closing down" not in err
    log = path.read_text()
    for line in ("result line", "[remedi] progress line", "FutureWarning: pyarrow says something",
                 "INFO py4j.clientserver: Closing down clientserver connection", "a real error"):
        assert line in log


def test_verbose_keeps_the_chatter_on_the_console_and_a_failure_is_logged(tmp_path, capsys):
    import logging
    import warnings

    from remedi_spark.cli import console

    path = tmp_path / "v.log"
    with pytest.raises(RuntimeError, match="boom"):
        with warnings.catch_warnings(), console(path, verbose=True):
            warnings.simplefilter("always")
            warnings.warn("petastorm says something", FutureWarning)
            logging.getLogger("py4j.clientserver").info("Closing down clientserver connection")
            raise RuntimeError("boom")
    err = capsys.readouterr().err
    assert "petastorm says something" in err and "Closing down clientserver connection" in err
    assert "Traceback" in path.read_text() and "RuntimeError: boom" in path.read_text()


def test_child_processes_warn_on_the_console_only_when_verbose(tmp_path, monkeypatch):
    """TorchDistributor's workers write to the console directly: their FutureWarnings (Petastorm on
    pyarrow 14) are off by default, on with --verbose, and the environment is put back afterwards."""
    import subprocess

    from remedi_spark.cli import console

    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    child = [sys.executable, "-c", "import warnings; warnings.warn('pyarrow.localfs is deprecated', FutureWarning)"]
    for verbose in (False, True):
        with console(tmp_path / f"{verbose}.log", verbose=verbose):
            err = subprocess.run(child, capture_output=True, text=True, check=True).stderr
        assert ("pyarrow.localfs is deprecated" in err) == verbose
    assert "PYTHONWARNINGS" not in os.environ


def test_launcher_output_goes_to_the_log_and_to_the_console_only_when_verbose(tmp_path, capsys):
    """TorchDistributor's torchrun output reaches the driver through pyspark's log-streaming server,
    whose thread writes to sys.stderr: inside launcher_output_to_log a quiet console keeps it in the
    log only (the elastic agent's exit-barrier traceback after every run); --verbose shows it."""
    from pyspark.ml.torch.log_communication import LogStreamingClient, LogStreamingServer

    from remedi_spark.cli import console
    from remedi_spark.log_streams import launcher_output_to_log

    line = "torch.distributed.elastic: Error waiting on exit barrier"
    for verbose in (False, True):
        path = tmp_path / f"{verbose}.log"
        with console(path, verbose=verbose):
            stderr = sys.stderr
            with launcher_output_to_log():
                server = LogStreamingServer()
                server.start("127.0.0.1")
                while server.server is None:  # listening once its thread has bound the port
                    time.sleep(0.01)
                client = LogStreamingClient("127.0.0.1", server.port)
                client.send(line)
                client.close()
                server.shutdown()
            assert sys.stderr is stderr  # put back
            print("[remedi] after the launch", file=sys.stderr)
        err = capsys.readouterr().err
        assert (line in err) == verbose and "[remedi] after the launch" in err
        assert line in path.read_text() and "[remedi] after the launch" in path.read_text()
    stream = sys.stderr
    with launcher_output_to_log():  # outside the CLI's console (a notebook, a library caller): unchanged
        assert sys.stderr is stream


def test_progress_lines_elapsed_bar_and_estimate():
    import io

    from remedi_spark import progress

    now = [0.0]
    out = io.StringIO()  # not a terminal: plain ASCII lines
    with progress.scope():
        models = progress.Progress("train-base", 2, "model", stream=out, clock=lambda: now[0])
        folds = progress.Progress("lgbm_focal", 4, "fit", stream=out, clock=lambda: now[0])
        now[0] = 30.0
        folds.advance("fold 1/3")
        assert folds.remaining() == 90.0
        now[0] = 120.0
        folds.advance(n=3)
        models.advance("lgbm_focal")
        assert progress._OPEN == [models]  # a finished tracker closes itself
    assert progress._OPEN == []  # scope closed the unfinished one
    lines = out.getvalue().splitlines()
    assert lines[0] == ("[remedi]   lgbm_focal: fold 1/3 [#####---------------] 1/4 fits, 30s elapsed, "
                        "~1m30s left")
    assert lines[1] == "[remedi]   lgbm_focal: fit 4 [####################] 4/4 fits, 2m00s elapsed, done"
    assert lines[2] == ("[remedi] train-base: lgbm_focal [##########----------] 1/2 models, 2m00s elapsed, "
                        "~2m00s left")
    assert all("\r" not in line and line.isascii() for line in lines)


def test_progress_on_a_terminal_draws_blocks_and_scope_closes_what_failed():
    import io

    from remedi_spark import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    with pytest.raises(ValueError):
        with progress.scope():
            progress.track("stage", 3, stream=out).advance("one")
            raise ValueError("a step failed")
    assert progress._OPEN == []
    assert "█" in out.getvalue() and "░" in out.getvalue()
    assert progress.format_seconds(3725) == "1h02m05s" and progress.bar(0.5, 4) == "[##--]"
    with pytest.raises(ValueError, match="total must be at least 1"):
        progress.track("nothing", 0)


def test_pipeline_stage_count_follows_the_config(base_cfg):
    from remedi_spark.config import replace
    from remedi_spark.pipeline import pipeline_stage_count

    assert pipeline_stage_count(base_cfg) == 3 + 4 + 4 + 1  # tracking is off in the tests: no promote
    registering = replace(base_cfg, tracking={"enabled": True})
    assert pipeline_stage_count(registering, scored_months=1) == 3 + 4 + 2 + 1 + 1
