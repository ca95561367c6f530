# remedi-spark: `make demo` (sets up, then runs the whole pipeline on 30k synthetic owners, one model of each
# family) and `make test` (the fast tier); `make demo-full` (every model, 50k owners) and `make test-all`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PETASTORM := petastorm==0.13.1

.PHONY: setup demo demo-full paper monitor-demo cluster-demo backtest train-base tune kdef-study kaml-study hm3-study neural-defaults test test-all reliability bench clean

setup: $(VENV)/.installed .jars/.resolved

# Installs the package with the extra `local`: the pinned Spark, Delta, torch, pyarrow... stack that a
# Databricks runtime brings itself, so the wheel does not require it (pyproject.toml). petastorm goes
# in with --no-deps (its metadata wants setuptools<70, which conflicts with torch; its real
# dependencies are in pyproject.toml).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[local,dev]"
	$(PIP) install --quiet --no-deps $(PETASTORM)
	touch $@

# Delta Lake and SynapseML jars from Maven Central into .jars/, once (stamped by the pom's hash).
.jars/.resolved: jvm/pom.xml $(VENV)/.installed
	$(PY) -m remedi_spark.jars --pom jvm/pom.xml --out .jars
	touch $@

demo: setup
	$(PY) -m remedi_spark demo --conf conf/demo.yaml

# Every configured model (conf/models.yaml) on 50k owners; the studies and `tune` below read its tables.
demo-full: setup
	$(PY) -m remedi_spark demo --conf conf/demo_full.yaml

# The paper's scale (conf/paper.yaml): 800k owners, every configured model, negative sampling 0.1, the report.
paper: setup
	$(PY) -m remedi_spark demo --conf conf/paper.yaml

# A world whose digital activity shifts after training: drift and a retraining decision per month.
monitor-demo: setup
	$(PY) -m remedi_spark monitor-demo --conf conf/monitor_demo.yaml

# The stages as separate spark-submits on a 2-worker standalone cluster (127.0.0.1), then local mode, compared.
cluster-demo: setup
	$(PY) -m remedi_spark.standalone --conf conf/cluster_demo.yaml

# Walk-forward backtest of the lead list on its own world (conf/backtest.yaml: 20k owners, 3 backtest
# months, two LightGBMs): generate → features → backtest stage, timed into bench/results/backtest.json.
backtest: setup
	$(PY) bench/backtest.py --conf conf/backtest.yaml --feature-months 2024-03..2025-01 --out bench/results/backtest.json

train-base: setup
	$(PY) -m remedi_spark train-base --conf conf/demo.yaml

# Hyperparameter search on the full demo's data (after demo-full: the student's search needs the teacher's
# predictions): LightGBM base models and the student, best params to conf/tuned/demo_full.yaml; then
# `train-base --conf conf/tuned/demo_full.yaml` trains with them.
tune: setup
	$(PY) -m remedi_spark tune --conf conf/demo_full.yaml

# KDEF K-table on the full demo data (after demo-full): K = 1..4, KDEF vs independent nets.
kdef-study: setup
	$(PY) -m remedi_spark kdef-study --conf conf/demo_full.yaml

# KAML ablations on the full demo data (after demo-full): open windows, ranking loss, shared heads.
kaml-study: setup
	$(PY) -m remedi_spark kaml-study --conf conf/demo_full.yaml

# HM3 ablations on the full demo data (after demo-full): auxiliary funnel tasks, hierarchical heads.
hm3-study: setup
	$(PY) -m remedi_spark hm3-study --conf conf/demo_full.yaml

# Two tiers (README, "Tests"): `make test` = unit tests and the shared tiny world (fast tier), on two
# pytest-xdist workers, a test file per worker at a time (a file's module fixtures are built once; the
# session's shared world is built once, under a file lock); `make test-all` adds the slow tier (end to
# end, reliability pipeline, fault drivers, the cluster, the DDP launches), one test at a time.
test: setup
	$(PY) -m pytest -m "not slow" -n 2 --dist loadfile --no-loadscope-reorder --durations=15

test-all: test
	$(PY) -m pytest -m slow --durations=15

# Bad input, fault injection (killed Delta write, task retry, failing model), idempotency and
# reproduction from run manifests, safe artifacts (all of it in `make test-all`, the fast part in `make test`).
reliability: setup
	$(PY) -m pytest -m reliability

# The neural models' training defaults (stopping metric, epoch budget) chosen on training owners' fold-0 OOF
# rows of make demo-full's tables: bench/results/neural_defaults.json.
neural-defaults: setup
	$(PY) bench/neural_defaults.py --conf conf/demo_full.yaml

bench: setup
	$(PY) bench/foundation.py --out bench/results/foundation.json
	$(PY) bench/gbdt.py --out bench/results/gbdt.json
	$(PY) bench/neural.py --out bench/results/neural.json
	$(PY) bench/fusion.py --out bench/results/fusion.json
	$(PY) bench/scoring.py --out bench/results/scoring.json
	$(PY) bench/tuning.py --out bench/results/tuning.json
	$(PY) bench/negative_sampling.py

clean:
	rm -rf data/demo data/demo_full data/paper data/backtest data/monitor_demo data/cluster_demo data/cluster_demo_local data/local build/cluster-demo spark-warehouse metastore_db derby.log
