"""Hyperparameter search (stage ``tune``, issue 25): Optuna TPE per model on training owners only.

* :mod:`.space` turns ``tuning.spaces.<family>`` into Optuna suggestions;
* :mod:`.data` collects the rows a search may read: ``split = train`` rows (training owners outside
  the evaluation month), filtered before anything else is computed or collected;
* :mod:`.lgbm` fits one inner fold of one trial (LightGBM, in a Spark task or on the driver);
* :mod:`.neural` does the same for neural models, in-process on rows sampled by owner;
* :mod:`.study` runs a model's study: batches of trials, fold by fold, with median pruning;
* :mod:`.output` writes ``tuning_results`` and the config overlay;
* :mod:`.stage` is the stage function :func:`~.stage.run_tuning`.
"""
