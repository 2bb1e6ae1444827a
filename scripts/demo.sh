#!/usr/bin/env bash
# `make demo`: the whole serving path on CPU, no GPU, no download, in about a minute.
# tiny random-weight model (.demo/model) -> `orpheus-tts serve` -> `orpheus-tts say` over the WebSocket -> out.wav,
# then the playground's URL: at a terminal the server keeps serving it until Ctrl-C; otherwise (CI, pipes) the
# server stops and the demo prints the command that serves it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

demo=.demo
out=out.wav
mkdir -p "$demo"
if [ ! -f "$demo/model/snac/config.json" ]; then
  echo "==> making the tiny random-weight model in $demo/model"
  orpheus-tts make-tiny-model "$demo/model"
fi

# 8000 if free (a URL to remember for the playground), else any free port.
port=$(python - <<'EOF'
import socket
for port in (8000, 0):
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            print(s.getsockname()[1])
            break
    except OSError:
        continue
EOF
)
echo "==> starting orpheus-tts serve on 127.0.0.1:$port (log: $demo/server.log)"
orpheus-tts serve --model "$demo/model" --host 127.0.0.1 --port "$port" --device cpu --snac-device cpu \
  --no-cuda-graphs --max-output-len 256 >"$demo/server.log" 2>&1 &
server=$!
# Whatever happens below, the server does not outlive the demo.
trap 'kill "$server" 2>/dev/null || true' EXIT

python - "$port" "$server" <<'EOF'
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
for _ in range(600):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the server exited during startup (see .demo/server.log)")
    time.sleep(0.5)
sys.exit("the server was not ready after 5 minutes (see .demo/server.log)")
EOF

echo "==> orpheus-tts say (WebSocket ws://127.0.0.1:$port/ws/tts)"
# Random weights rarely pick the stop token by themselves: bound the length (84..168 tokens: 1-2 s of audio).
orpheus-tts say "Hello from Orpheus, served on a laptop." -o "$out" --url "ws://127.0.0.1:$port/ws/tts" \
  --voice tara --min-tokens 84 --max-tokens 168

python - "$out" <<'EOF'
import sys
from orpheus_tts.speech.wav import read_wav_info
rate, channels, bits, frames = read_wav_info(sys.argv[1])
if (rate, channels, bits) != (24000, 1, 16) or frames == 0:
    sys.exit(f"{sys.argv[1]} is not 24 kHz mono s16le audio: {rate} Hz, {channels} ch, {bits} bit, {frames} samples")
print(f"==> {sys.argv[1]}: valid WAV, 24 kHz mono s16le, {frames / rate:.2f} s")
EOF

echo
echo "Wrote $(pwd)/$out"
echo "The tiny model has random weights: the WAV is noise, not speech. It shows the serving path works end to end."
echo "For speech, serve the real model on a GPU (see README: orpheus-tts serve with canopylabs/orpheus-3b-0.1-ft)."
echo

status=0
if [ -t 0 ] && [ -t 1 ]; then
  # A person at a terminal: keep serving so that they can try the playground, until Ctrl-C.
  echo "==> the playground (same server, same noise): http://127.0.0.1:$port/playground/"
  echo "    Ctrl-C stops the server."
  # Ctrl-C reaches the server too (same process group): it drains and exits; `wait` then returns.
  trap ':' INT
  wait "$server" || status=$?
  if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server"
    status=0
    wait "$server" || status=$?
  fi
else
  echo "==> stopping the server (SIGTERM: drain, then exit)"
  kill -TERM "$server"
  wait "$server" || status=$?
fi
trap - EXIT INT
if [ "$status" -ne 0 ]; then
  echo "the server exited with status $status (see $demo/server.log)" >&2
  exit 1
fi
if ! [ -t 0 ] || ! [ -t 1 ]; then
  echo "To try the playground, serve the same model and open http://127.0.0.1:8000/playground/ :"
  echo "  source scripts/env.sh && orpheus-tts serve --model $demo/model --host 127.0.0.1 --port 8000 --device cpu \\"
  echo "    --snac-device cpu --no-cuda-graphs --max-output-len 256"
fi
