"""LightGBM through SynapseML's ``LightGBMClassifier`` on the Spark DataFrame (JVM training).

Early stopping uses ``validationIndicatorCol``. SynapseML cannot call a Python objective
(custom objectives are a Scala ``FObjTrait``), so focal-loss models must use the native backend.
"""
from __future__ import annotations

from typing import Any

from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..base import KEYS, LABEL, BaseModel, keyed_parts
from .native import imbalance_params

# LightGBM parameter name -> SynapseML Param name
_PARAM_NAMES = {
    "num_iterations": "numIterations", "learning_rate": "learningRate", "num_leaves": "numLeaves",
    "min_data_in_leaf": "minDataInLeaf", "feature_fraction": "featureFraction",
    "bagging_fraction": "baggingFraction", "bagging_freq": "baggingFreq", "lambda_l1": "lambdaL1",
    "lambda_l2": "lambdaL2", "max_bin": "maxBin", "metric": "metric", "seed": "seed",
    "verbosity": "verbosity", "is_unbalance": "isUnbalance", "scale_pos_weight": "scalePosWeight",
    "max_depth": "maxDepth", "min_sum_hessian_in_leaf": "minSumHessianInLeaf", "deterministic": "deterministic",
}
_VECTOR = "_features"
_VALID = "_is_valid"


class SynapseLightGBM(BaseModel):
    """LightGBM logloss model trained by SynapseML."""

    def _classifier(self, stats: Any) -> Any:
        from synapse.ml.lightgbm import LightGBMClassifier

        if self.spec.objective != "logloss":
            raise ValueError(f"{self.name}: SynapseML cannot take a Python objective ({self.spec.objective}); "
                             "set backend: native for this model")
        params = {**self.lightgbm_params(), **imbalance_params(self.settings.imbalance, stats["n"], stats["pos"])}
        clf = LightGBMClassifier(labelCol=LABEL, featuresCol=_VECTOR, validationIndicatorCol=_VALID,
                                 earlyStoppingRound=self.settings.early_stopping_rounds, objective="binary",
                                 categoricalSlotIndexes=self.features.categorical_indexes,
                                 numTasks=self.settings.num_workers, useBarrierExecutionMode=True,
                                 dataTransferMode=self.settings.synapseml_transfer,
                                 # bulk transfer: one LightGBM worker per partition (streaming: per executor)
                                 useSingleDatasetMode=False)
        passthrough = []
        for key, value in params.items():
            name = _PARAM_NAMES.get(key)
            if name and clf.hasParam(name):
                clf.set(clf.getParam(name), value)
            else:
                passthrough.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
        if passthrough:
            clf.setPassThroughArgs(" ".join(passthrough))
        return clf

    def _assemble(self, df: DataFrame) -> DataFrame:
        return VectorAssembler(inputCols=self.features.columns, outputCol=_VECTOR, handleInvalid="keep").transform(df)

    def fit(self, train: DataFrame, valid: DataFrame) -> "SynapseLightGBM":
        stats = train.agg(F.count(F.lit(1)).alias("n"), F.sum(LABEL).alias("pos")).first()
        cols = [*KEYS, *self.features.columns, LABEL]
        data = train.select(*cols, F.lit(False).alias(_VALID)).unionByName(valid.select(*cols, F.lit(True).alias(_VALID)))
        # a shuffle right before the fit: barrier stages refuse union/limit chains (SPARK-24820)
        # and SynapseML trains one LightGBM worker per partition (bulk transfer)
        self._model = self._classifier(stats).fit(keyed_parts(self._assemble(data), self.settings.num_workers))
        self.info.update(best_iteration=int(self._model.getBoosterBestIteration()), train_rows=stats["n"],
                         train_positives=stats["pos"])
        return self

    def predict(self, df: DataFrame) -> DataFrame:
        scored = self._model.transform(self._assemble(df.select(*KEYS, *self.features.columns)))
        return scored.select(*KEYS, vector_to_array("probability")[1].alias("p"))

    def artifact(self) -> bytes:
        return self._model.getNativeModel().encode("utf-8")

    def _restore(self, spark: SparkSession, data: bytes) -> None:
        from synapse.ml.lightgbm import LightGBMClassificationModel

        self._model = LightGBMClassificationModel.loadNativeModelFromString(data.decode("utf-8")) \
            .setFeaturesCol(_VECTOR)
