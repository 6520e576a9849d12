"""`python -m training.threshold`: kept as the name the shipped model card (model/README.md) gives the threshold for
domain shift; the module is training/results/threshold.py (python -m training.results.threshold)."""

from training.results.threshold import main

if __name__ == "__main__":
    raise SystemExit(main())
