"""Hand-built raw tables for exact tests (every value is chosen here, nothing is random) and the
small base-model specs the pipeline tests train."""
from __future__ import annotations

import datetime as dt

from remedi_spark.io.schemas import load_schema


def owner(user_id: int, **over) -> dict:
    row = {"user_id": user_id, "brand": "aurora", "segment": "midsize", "region_id": 3, "region_tier": 1,
           "dealer_id": "D301", "owner_age": 45, "gender": "F", "vehicle_start_month": "2020-01",
           "has_loan": False, "loan_term_months": 0, "loyalty_member": False, "do_not_contact": False,
           "has_app": True}
    row.update(over)
    return row


def activity(user_id: int, month: str, **over) -> dict:
    schema = load_schema("monthly_activity")
    row = {c.name: (0.0 if c.type == "double" else 0) for c in schema.columns}
    row.update({"user_id": user_id, "month": month, **over})
    return row


def purchase(user_id: int, month: str) -> dict:
    y, m = map(int, month.split("-"))
    return {"user_id": user_id, "month": month, "purchase_date": dt.date(y, m, 15), "new_brand": "bexley",
            "same_brand": False}


def frame(spark, table: str, rows: list[dict]):
    """A DataFrame of ``rows`` with the table's exact schema."""
    schema = load_schema(table).struct()
    return spark.createDataFrame([tuple(r[f.name] for f in schema.fields) for r in rows], schema)


def raw_world(spark, store, months: list[str], purchases=(("2024-09", 1),), users=(1, 2, 3), **activity_values):
    """Owners ``users`` with zero activity in ``months`` (plus ``activity_values``) and the given
    (month, user) purchases, written through ``store``."""
    store.write_table(frame(spark, "owners", [owner(u) for u in users]), "owners")
    store.write_months(frame(spark, "monthly_activity", [activity(u, m, **activity_values) for m in months
                                                         for u in users]), "monthly_activity", list(months))
    store.write_months(frame(spark, "purchases", [purchase(u, m) for m, u in purchases]), "purchases",
                       sorted({m for m, _ in purchases}))


def lgbm_spec(name: str, params: dict, objective: str = "logloss", feature_group: str | None = None,
              backend: str = "native") -> dict:
    """A LightGBM entry of ``base_models.models``."""
    return {"name": name, "family": "lgbm", "backend": backend, "objective": objective,
            "feature_group": feature_group, "params": params}


# one epoch of a 4-dim-embedding, 16-unit MLP: the smallest torch base model that still learns; trained
# on the driver (no TorchDistributor launch: the DDP path has its own tests in the slow tier)
TINY_MLP = {"name": "mlp", "family": "mlp", "backend": "torch", "objective": "logloss", "feature_group": None,
            "params": {"epochs": 1, "batch_size": 512, "launcher": "driver", "model": {"emb_dim": 4, "hidden": [16]}}}
