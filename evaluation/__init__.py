"""Offline evaluation as the platform and the organisers do it: pack, run, score, report; and the preflight.

  labels.py   labelled sets (a CSV, a data folder's layout, a run's held-out fold) -> one table; --slides, --limit
  pack.py     that table -> Grand Challenge jobs (amf.jobs.write_job), ground_truth.json, figures.csv
  run.py      the container's entrypoint over every job (a process per job, or in this process)
  identity.py which model and toolkit scored, and which scored figures the model trained on (fingerprints)
  measure.py  metrics, intervals, breakdowns and the ROC band of scored figures, on one resampling
  score.py    the organisers' Track 2 checks and metrics, with intervals -> metrics.json, predictions.csv
  report.py   report.md and its plots, from what score computed
  preflight.py  the container as packaged on labelled data (each member on its held-out fold, the ensemble on the
              figures it did not train on) and the model folder, checked against what the card says
  __main__.py the command line: python -m evaluation pack|run|score|preflight ...
Nothing here imports torch (test_evaluate.py checks it).
"""
