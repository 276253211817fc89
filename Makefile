# The two commands a fresh machine needs: `make demo` (the whole loop) and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test test-fast clean
setup:
	@scripts/setup.sh

demo: setup
	$(PY) -m compiler demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not e2e and not slow"

clean:
	rm -rf triton_repo build .pytest_cache
