"""Offline evaluation as the platform and the organisers do it: pack, run, score, report.

  pack.py     a labelled set of patches -> Grand Challenge jobs (amf.jobs.write_job), ground_truth.json, figures.csv
  run.py      the container's entrypoint over every job (a process per job, or in this process)
  score.py    the organisers' Track 2 checks and metrics, with intervals -> metrics.json, predictions.csv
  report.py   report.md and its plots, from what score computed
  __main__.py the command line: python -m training.evaluate pack|run|score ...
Nothing here imports torch (test_evaluate.py checks it).
"""
