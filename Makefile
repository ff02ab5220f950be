# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e . --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

EXAMPLES := nlverify/data/examples

demo: $(STAMP)
	@echo "== bounds of a sigmoid MLP on a small input box (CROWN)"
	$(BIN)/nlverify bounds $(EXAMPLES)/demo_sigmoid.onnx $(EXAMPLES)/demo_sigmoid.vnnlib --method crown
	@echo "== is class 0 robust on the small box? (expected: unsat = proved robust)"
	$(BIN)/nlverify verify $(EXAMPLES)/demo_sigmoid.onnx $(EXAMPLES)/demo_sigmoid.vnnlib --timeout 60
	@echo "== and on a large box? (expected: sat, with a counterexample checked in onnxruntime)"
	$(BIN)/nlverify verify $(EXAMPLES)/demo_sigmoid.onnx $(EXAMPLES)/demo_sigmoid_large.vnnlib --timeout 60 --result-file demo_result.txt
	@cat demo_result.txt

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bounds_speed.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis demo_result.txt
