# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv if it is
# missing and installs the pinned requirements into it (the CPU build of torch by default).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-slow venv clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# End-to-end pipeline on the built-in digits (see bash_files/demo.sh); outputs under demo-out/.
demo: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash bash_files/demo.sh demo-out

# The fast suite (what CI runs). Long quality runs are marked `slow`: `make test-slow`.
test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

clean:
	rm -rf demo-out .pytest_cache
