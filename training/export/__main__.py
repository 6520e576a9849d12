"""python -m training.export: training/export/folder.py's command line (its MANUAL)."""

from training.export.folder import main

if __name__ == "__main__":
    raise SystemExit(main())
