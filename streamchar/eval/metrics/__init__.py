"""What measurements are computed on: the instruments' fixed front-ends and the evaluation cache
(``features.py``), transcript error rates (``error_rates.py``) and statistics such as the Fréchet distance,
ROC AUC and Pearson correlation (``statistics.py``)."""
