# `make demo`: tiny random-weight model -> server -> WAV over the real WebSocket path.
# `make test`: lint + every test (runtime on CPU, operator and chart against a real kube-apiserver).
.PHONY: demo test lint
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
lint:
	bash -c 'source scripts/env.sh && ruff check . && ruff format --check .'
