# `make demo`: tiny random-weight model -> server -> WAV over the real WebSocket path.
# `make test`: lint + every test (runtime on CPU, operator and chart against a real kube-apiserver, images built,
# and the end-to-end suite on a real single-node cluster, tests/e2e, as root).
# `make e2e`: only the end-to-end suite (a real single-node cluster, tests/e2e; needs root).
# `make cluster-up` / `make cluster-down`: that cluster by hand (docs/deploy.md, "Try it locally").
# `make images`: the operator and CPU PyTorch images with buildah (no Docker), cached; prints name=path lines.
# `make dev`: skaffold's dev loop (profile cpu) against a running cluster; see scripts/dev.sh for what it needs.
# `make screenshot`: docs/playground.png, taken in headless Chromium while the playground plays.
.PHONY: demo test lint e2e cluster-up cluster-down images dev screenshot
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh $(ARGS)
e2e:
	bash scripts/test.sh -m e2e tests/e2e $(ARGS)
cluster-up:
	bash -c 'source scripts/env.sh && python -m tests.e2e.cluster up'
cluster-down:
	bash -c 'source scripts/env.sh && python -m tests.e2e.cluster down'
lint:
	bash -c 'source scripts/env.sh && ruff check . && ruff format --check .'
images:
	bash images/build.sh
dev:
	bash scripts/dev.sh
screenshot:
	bash -c 'bash scripts/system-deps.sh && source scripts/env.sh && python scripts/screenshot.py'
