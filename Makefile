# Two entry points for people (README Quick start) and CI: `make demo` and `make test`.
# Both create .venv if needed and install torch==2.13.0 (CPU wheel) first; the demo then installs meddiff and
# what it needs to run, the tests add the test-only extras (pytest, diffusers, tensorboard).
PY := .venv/bin/python
RUN_STAMP := .venv/.meddiff-installed
TEST_STAMP := .venv/.meddiff-test-installed

.PHONY: setup setup-test demo test test-slow clean

setup: $(RUN_STAMP)
setup-test: $(TEST_STAMP)

$(RUN_STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh test
	touch $(RUN_STAMP) $(TEST_STAMP)

demo: $(RUN_STAMP)
	.venv/bin/meddiff demo --out runs/demo

test: $(TEST_STAMP)
	$(PY) -m pytest -q

test-slow: $(TEST_STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf .venv runs
