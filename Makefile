# Quick start:  make demo   (main job on the packaged models + built-in benchmark)
#               make test   (the test suite)
# Both create .venv and install whatever is missing first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-all test-lmms-eval clean-cache

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/compactvlm demo

# the lmms-eval plugin test and the scoring-rules check against lmms-eval's code, as their own step: lmms-eval's code (not its heavy dependencies: torchvision, wandb,
# ...) in a side folder on PYTHONPATH, so the venv's torch stays as pinned
LMMS_SITE := $(VENV)/lmms-eval-site
$(LMMS_SITE)/.installed: $(VENV)/.installed
	$(BIN)/python -m pip install -q --no-deps --target $(LMMS_SITE) "lmms-eval==0.7.3" loguru pytz
	touch $@

test-lmms-eval: setup $(LMMS_SITE)/.installed
	PYTHONPATH=$(LMMS_SITE) $(BIN)/python -m pytest -q tests/test_lmms_eval_plugin.py tests/test_metric_references.py

test: setup test-lmms-eval
	$(BIN)/python -m pytest -q

clean-cache:
	rm -rf $${COMPACTVLM_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/compactvlm}
