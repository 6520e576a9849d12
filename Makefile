# Two commands matter on a fresh machine (see README):
#   make demo   the container's entrypoint on the shipped model and the sample job, in the image's runtime
#   make test   the whole test suite, in the development environment
#   make lint   ruff, hadolint, shellcheck (CI runs it before make test)
#   make test-fast   while working: the tests not marked slow (pytest -m "not slow"): no training, no venv build, under a minute
#   make install-model FROM=DIR   a model folder (the pipeline's --model-out) into model/, replacing the model there whole
#   make preflight MODEL=DIR DATA=DIR [RUN=DIR]   the container as packaged, on labelled data, against its card
PYTHON ?= python3
VENV := .venv
RUNTIME := .venv-runtime

.PHONY: demo test test-fast dev runtime lint bench sample expected install-model preflight clean

$(VENV)/.stamp: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

$(RUNTIME)/.stamp: requirements.txt
	$(PYTHON) -m venv $(RUNTIME)
	$(RUNTIME)/bin/pip install -q -r requirements.txt
	touch $@

dev: $(VENV)/.stamp
runtime: $(RUNTIME)/.stamp

demo: $(RUNTIME)/.stamp
	$(RUNTIME)/bin/python inference.py --input test/input --output out/demo
	@cat out/demo/multiple-mitotic-figure-classification.json

test: $(VENV)/.stamp
	$(VENV)/bin/python -m pytest

test-fast: $(VENV)/.stamp
	$(VENV)/bin/python -m pytest -m "not slow"

# ruff (configured in pyproject.toml), hadolint and shellcheck; .pre-commit-config.yaml runs the same on commit
lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/shellcheck do_build.sh do_save.sh do_save_model.sh do_test_run.sh .ci/run

bench: $(VENV)/.stamp
	$(VENV)/bin/python -m bench.container

sample: $(VENV)/.stamp
	$(VENV)/bin/python test/make_sample_input.py test/input

# the model's expected output on the sample job (model/expected_output.json; training.export writes it with the model)
expected: $(VENV)/.stamp
	$(VENV)/bin/python test/compare_output.py --write

# the files FROM's manifest and card name replace those model/'s named (training/export/install.py); nothing else
install-model: $(VENV)/.stamp
	@test -n "$(FROM)" || { echo "error: make install-model FROM=DIR (a model folder)" >&2; exit 2; }
	$(VENV)/bin/python -m training.export.install "$(FROM)"

# the container as packaged (the image's runtime) on DATA, against what MODEL's card says (docs/evaluation.md, "Preflight")
preflight: $(VENV)/.stamp $(RUNTIME)/.stamp
	@test -n "$(MODEL)" -a -n "$(DATA)" || { echo "error: make preflight MODEL=DIR DATA=DIR [RUN=DIR]" >&2; exit 2; }
	$(VENV)/bin/python -m evaluation preflight "$(MODEL)" --data "$(DATA)" $(if $(RUN),--run "$(RUN)")

clean:
	rm -rf out .pytest_cache
