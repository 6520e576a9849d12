"""Fitting: k-fold training of the members (python -m training.train, __main__.py; one fold: kfold.py).

Its parts: models.py (timm backbone + head, LoRA, local weights), recipe.py (MixStyle, alignment, EMA teacher),
gpu_augment.py (the batches on the training device; the augmentations themselves: training/augment.py),
parallel.py (several folds on one device), ddp.py (what the number of processes changes), device.py, hub.py,
progress.py, tracking.py, curves.py. Everything here needs torch.
"""
