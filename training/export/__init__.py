"""A run -> the container's model folder (python -m training.export, __main__.py): folder.py writes it (members.py:
the ONNX members and their parity with torch; fingerprint.py: the training figures' fingerprints)."""
