# Shortcuts; the README's two commands work without make (scripts/demo.sh, scripts/test.sh).
.PHONY: setup demo test unit lint typecheck clean

setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

unit: setup
	.venv/bin/python -m pytest -m "not root"

lint: setup
	.venv/bin/ruff check agent enforcement tests
	.venv/bin/ruff format --check agent enforcement tests

typecheck: setup
	.venv/bin/mypy

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
