"""Monthly monitoring: realized precision/recall, feature and score drift (PSI), retraining rules."""
