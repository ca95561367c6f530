"""The Databricks Asset Bundle parses and references only files, stages, tasks and parameters
that exist (no workspace needed)."""
import glob
import re

import yaml

from remedi_spark.cli import build_parser
from remedi_spark.config import load_config
from tests.conftest import REPO


def _bundle():
    root = yaml.safe_load((REPO / "databricks.yml").read_text())
    files = [p for pattern in root["include"] for p in sorted(glob.glob(str(REPO / pattern)))]
    jobs = {}
    for f in files:
        jobs.update(yaml.safe_load(open(f))["resources"]["jobs"])
    return root, files, jobs


def test_bundle_parses_and_defines_both_jobs():
    root, files, jobs = _bundle()
    assert root["bundle"]["name"] == "remedi-spark" and files
    assert {"remedi_monthly", "remedi_retrain"} == set(jobs)
    assert root["variables"]["synapseml"]["default"].startswith("com.microsoft.azure:synapseml-lightgbm_2.12:1.1.")


def test_clusters_run_an_ml_runtime_that_brings_torch():
    # the wheel leaves pyspark, delta-spark and torch to the runtime (test_packaging.py): the job
    # clusters run Databricks Runtime 15.4 LTS ML (Spark 3.5, Scala 2.12 for SynapseML 1.1; torch)
    root, _, jobs = _bundle()
    version = root["variables"]["spark_version"]["default"]
    assert re.fullmatch(r"15\.4\.x-(cpu|gpu)-ml-scala2\.12", version), version
    for job_name, job in jobs.items():
        assert job["job_clusters"], job_name
        for cluster in job["job_clusters"]:
            assert cluster["new_cluster"]["spark_version"] == "${var.spark_version}", (job_name, cluster)


def test_every_task_references_existing_files_stages_and_parameters():
    root, _, jobs = _bundle()
    stages = set(build_parser()._subparsers._group_actions[0].choices)
    variables = set(root["variables"])
    for job_name, job in jobs.items():
        keys = {t["task_key"] for t in job["tasks"]}
        params = {p["name"] for p in job.get("parameters", [])}
        clusters = {c["job_cluster_key"] for c in job.get("job_clusters", [])}
        for task in job["tasks"]:
            for dep in task.get("depends_on", []):
                assert dep["task_key"] in keys, (job_name, task["task_key"], dep)
            if "job_cluster_key" in task:
                assert task["job_cluster_key"] in clusters
            if "run_job_task" in task:
                ref = re.fullmatch(r"\$\{resources\.jobs\.(\w+)\.id\}", task["run_job_task"]["job_id"])
                assert ref and ref.group(1) in jobs
            if "spark_python_task" not in task:
                continue
            spt = task["spark_python_task"]
            script = (REPO / "resources" / spt["python_file"]).resolve()
            assert script.exists(), script
            stage = re.search(r'main\(\["([\w-]+)"', script.read_text()).group(1)
            assert stage in stages
            args = " ".join(spt["parameters"])
            assert set(re.findall(r"\{\{job\.parameters\.(\w+)\}\}", args)) <= params
            assert set(re.findall(r"\$\{var\.(\w+)\}", args)) <= variables
            conf = spt["parameters"][spt["parameters"].index("--conf") + 1]
            assert conf == "${workspace.file_path}/${var.conf}"
            assert load_config(REPO / root["variables"]["conf"]["default"]).spark.profile == "databricks"
            libs = task["libraries"]
            assert any("whl" in lib for lib in libs) and any("maven" in lib for lib in libs)


def test_monitor_branches_on_a_task_value_not_an_exit_status():
    _, _, jobs = _bundle()
    tasks = {t["task_key"]: t for t in jobs["remedi_monthly"]["tasks"]}
    assert tasks["retrain_needed"]["condition_task"]["left"] == "{{tasks.monitor.values.retrain}}"
    conf = load_config(REPO / "conf" / "databricks.yaml")
    assert conf.monitoring.retrain_exit_code == 0 and conf.tracking.uri == "databricks"
