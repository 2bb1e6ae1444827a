# `make demo`: tiny random-weight model -> server -> WAV over the real WebSocket path.
# `make test`: lint + every test (runtime on CPU, operator and chart against a real kube-apiserver).
# `make screenshot`: docs/playground.png, taken in headless Chromium while the playground plays.
.PHONY: demo test lint screenshot
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
lint:
	bash -c 'source scripts/env.sh && ruff check . && ruff format --check .'
screenshot:
	bash -c 'bash scripts/system-deps.sh && source scripts/env.sh && python scripts/screenshot.py'
