"""The model card (python -m training.card, __main__.py): build.py measures every figure into card.json, render.py
fills the one template card.md from card.json alone."""
