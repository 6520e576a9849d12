"""A finished run's results: pooling its out-of-fold predictions (oof.py), every threshold rule (threshold.py),
paired comparison of two runs (compare.py), and its held-out figures predicted again under the container's
test-time augmentation (tta_oof.py, the one module here that needs torch).
"""
