"""The label columns of the ``features`` table: what a model must never take as an input, and
what an imported (custom) feature table may not name a feature."""

HORIZONS = (1, 2, 3)  # y_h{k}: a purchase in month T+k
HORIZON_LABELS = tuple(f"y_h{h}" for h in HORIZONS)
FUNNEL_LABELS = ("y_engage", "y_visit")  # engagement surge / shopping dealer visit in T+1..T+3
LABEL_COLUMNS = ("y", *HORIZON_LABELS, "label_complete", *FUNNEL_LABELS)
