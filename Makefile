# The two commands a fresh machine needs: `make demo` (the whole loop) and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test clean
setup:
	@scripts/setup.sh

demo: setup
	$(PY) -m compiler demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf triton_repo build .pytest_cache
