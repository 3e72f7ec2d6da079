# Two entry points for people (README Quick start) and CI: `make demo` and `make test`.
# Both create .venv if needed, install torch==2.13.0 (CPU wheel) first, then meddiff with test extras.
PY := .venv/bin/python
STAMP := .venv/.meddiff-installed

.PHONY: setup demo test test-slow clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	bash scripts/setup.sh
	touch $(STAMP)

demo: $(STAMP)
	.venv/bin/meddiff demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf .venv runs
