"""The distilled student as an MLflow pyfunc model, logged "from code": MLflow runs this file to load
the model (it calls ``set_model`` below), so nothing is pickled or unpickled.

Artifact ``student``: the folder distillation saved (``model.txt``, the LightGBM text model, and
``model.json``, its sidecar). Input: the owners' feature rows (the ``features`` table's columns the
student reads; its signature declares the numeric ones double, as the scoring job's encoder casts
them, so cast integer columns first: MLflow's schema check refuses int64 for a double column;
categorical columns as text). Output: the score the
scoring job gives them: categorical values map to their training codes (a value the student never
saw is missing), LightGBM's raw output plus the sidecar's init score is clipped to [0, 1] for an mse
student and put through the logistic function otherwise (``NativeLightGBM.predict``). Needs only
lightgbm, numpy and pandas where it is served.
"""
from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


def encode(frame: pd.DataFrame, numeric: list[str], categorical: dict[str, list[str]]) -> np.ndarray:
    """The student's columns of ``frame`` as float64: numeric as they are, categoricals as codes."""
    columns = [pd.to_numeric(frame[c], errors="coerce").astype("float64") for c in numeric]
    for c, values in categorical.items():
        codes = {v: float(i) for i, v in enumerate(values)}
        columns.append(frame[c].map(codes).astype("float64"))
    return np.column_stack([c.to_numpy() for c in columns]) if columns else np.empty((len(frame), 0))


def student_score(booster: lgb.Booster, sidecar: dict, frame: pd.DataFrame) -> np.ndarray:
    """The score of every row of ``frame`` (see the module docstring)."""
    features = sidecar["features"]
    z = booster.predict(encode(frame, features["numeric"], features["categorical"]), raw_score=True)
    z = z + float(sidecar["info"].get("init_score", 0.0))
    return np.clip(z, 0.0, 1.0) if sidecar["spec"]["objective"] == "mse" else 1.0 / (1.0 + np.exp(-z))


class StudentModel(PythonModel):
    """pyfunc wrapper around the saved student folder."""

    def load_context(self, context) -> None:
        folder = context.artifacts["student"]
        with open(f"{folder}/model.json", encoding="utf-8") as fh:
            self.sidecar = json.load(fh)
        with open(f"{folder}/model.txt", encoding="utf-8") as fh:
            self.booster = lgb.Booster(model_str=fh.read())

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        return pd.Series(student_score(self.booster, self.sidecar, model_input), name="score")


set_model(StudentModel())
