"""Entry points: every stage has --help; bad config fails fast with exit 2 before Spark starts."""
import subprocess
import sys

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
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


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
