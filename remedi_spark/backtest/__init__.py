"""Walk-forward backtest of the lead list (stage ``backtest``).

For each of the last ``backtest.months`` fully labelled months T, the whole chain (folds → base
models → meta-features → fusion → student) is trained in a sub-root holding only the months whose
three-month label window had closed by T (t + 3 ≤ T) plus T itself as the folds table's evaluation
month; then every owner of T is scored, the lead list is built with the business filters and
compared with T's buyers, for the student and for the rankers it is measured against.

* :mod:`.plan` — which months, their training months, the chains' configs;
* :mod:`.subroot` — the time-restricted copies of the main root's tables;
* :mod:`.rankers` — every ranker's score for every owner of T, and who the filters let through;
* :mod:`.evaluate` — lead-list metrics with a paired bootstrap over owners, month by month and
  as the mean over the months;
* :mod:`.stage` — the stage function and its console table.
"""
