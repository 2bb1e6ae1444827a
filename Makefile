# `make demo`: tiny random-weight model -> server -> WAV over the real WebSocket path.
# `make test`: lint + every test (runtime on CPU, operator and chart against a real kube-apiserver, images built).
# `make images`: the operator and CPU PyTorch images with buildah (no Docker), cached; prints name=path lines.
# `make dev`: skaffold's dev loop (profile cpu) against a running cluster; see scripts/dev.sh for what it needs.
.PHONY: demo test lint images dev
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
lint:
	bash -c 'source scripts/env.sh && ruff check . && ruff format --check .'
images:
	bash images/build.sh
dev:
	bash scripts/dev.sh
