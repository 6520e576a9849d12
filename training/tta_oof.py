"""`python -m training.tta_oof`: kept as the name the shipped model card (model/README.md) gives the re-prediction
under test-time augmentation; the module is training/results/tta_oof.py (python -m training.results.tta_oof)."""

from training.results.tta_oof import main

if __name__ == "__main__":
    raise SystemExit(main())
