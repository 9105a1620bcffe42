# Quick start:  make demo   (main job on the packaged models + built-in benchmark)
#               make test   (the test suite)
# Both create .venv and install whatever is missing first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-all clean-cache

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/compactvlm demo

test: setup
	$(BIN)/python -m pytest -q

clean-cache:
	rm -rf $${COMPACTVLM_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/compactvlm}
