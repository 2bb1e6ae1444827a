// The Orpheus TTS playground: one utterance per WebSocket (so an idle page holds no server capacity), PCM played
// as it arrives through scheduled AudioBufferSourceNodes behind a small jitter buffer.
// The protocol's constants (path, subprotocols, end marker, sample rate) come from /playground/info.json.

// The rest of what the page needs from runtime/orpheus_tts/protocol.py, copied (the page cannot import Python;
// tests/runtime/test_protocol.py checks that this JSON equals protocol.py's values).
const PROTOCOL = {
  "close": { "OK": 1000, "GOING_AWAY": 1001, "POLICY_VIOLATION": 1008, "MESSAGE_TOO_BIG": 1009, "INTERNAL_ERROR": 1011, "TRY_AGAIN_LATER": 1013 },
  "retry_reasons": ["busy", "loading", "draining"],
  "unauthorized_prefix": "unauthorized",
  "sampling_fields": ["temperature", "top_p", "repetition_penalty", "max_tokens", "min_tokens", "seed"],
  "integer_sampling_fields": ["max_tokens", "min_tokens", "seed"]
}; // end PROTOCOL
const CLOSE = PROTOCOL.close;
const CLOSE_ABNORMAL = 1006; // the browser's own code for a connection that ended without a close frame

const JITTER_S = 0.15; // audio buffered before playback starts, and again after an underrun
const $ = (id) => document.getElementById(id);

// Counters for people (the stats table) and for the browser tests (window.playground).
const stats = {
  state: "loading", // loading | idle | speaking | stopping | playing
  received: 0, // PCM samples received, all utterances
  scheduled: 0, // samples handed to the audio clock
  played: 0, // samples whose buffers finished playing (not stopped)
  underruns: 0,
  utterances: [], // one entry per utterance: {voice, firstAudioMs, audioS, rtf, underruns, result}
  events: [], // protocol events, in order: "open", "speak", "audio", "end", "cancel", "cancelled", "close <code>"
  error: null,
};
window.playground = stats;

let info = null;
let audio = null; // {ctx, analyser} made on the first click (browsers start audio only after a gesture)
let current = null; // the utterance in flight

// -- server info ------------------------------------------------------------------------------------------------

async function loadInfo() {
  for (;;) {
    try {
      const r = await fetch("info.json", { cache: "no-store" });
      if (r.ok) return await r.json();
      setStatus(r.status === 503 ? "The model is loading…" : `The server answered ${r.status}; retrying…`);
    } catch {
      setStatus("Cannot reach the server; retrying…");
    }
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

function applyInfo() {
  $("noise").hidden = !info.random_weights;
  $("keyfield").hidden = !info.api_key_required;
  $("text").maxLength = info.max_text_chars;
  $("voices").replaceChildren(...info.voices.map((v) => Object.assign(document.createElement("option"), { value: v })));
  if (!$("voice").value) $("voice").value = info.default_voice;
  for (const [name, value] of Object.entries(info.sampling)) $(name).value = value;
  $("max_tokens").max = info.sampling.max_tokens;
}

// -- the request --------------------------------------------------------------------------------------------------

function readRequest() {
  const req = { text: $("text").value, voice: $("voice").value.trim() || info.default_voice };
  for (const name of PROTOCOL.sampling_fields) {
    if ($(name).value === "") continue;
    const value = Number($(name).value);
    req[name] = PROTOCOL.integer_sampling_fields.includes(name) ? Math.trunc(value) : value;
  }
  return req;
}

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// Browsers cannot set Authorization on a WebSocket: the key travels as a subprotocol (never in the URL).
function subprotocols() {
  const key = $("apikey").value;
  const offered = [info.protocol.subprotocol];
  if (info.api_key_required && key) offered.push(info.protocol.bearer_prefix + base64url(key));
  return offered;
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${info.protocol.path}`;
}

// -- audio ----------------------------------------------------------------------------------------------------------

function ensureAudio() {
  if (!audio) {
    const ctx = new AudioContext({ sampleRate: info.sample_rate, latencyHint: "interactive" });
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 2048;
    analyser.connect(ctx.destination);
    audio = { ctx, analyser };
    requestAnimationFrame(drawScope);
  }
  return audio.ctx.resume();
}

function pcmToFloat(buffer) {
  const pcm = new Int16Array(buffer);
  const out = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) out[i] = pcm[i] / 32768;
  return out;
}

// Each chunk starts where the previous one ends (gap-free); when playback has caught up with the stream (or for
// the first chunk) it starts JITTER_S from now, so that a little audio is buffered against network jitter.
function schedule(u, samples) {
  const { ctx, analyser } = audio;
  const buffer = ctx.createBuffer(1, samples.length, info.sample_rate);
  buffer.copyToChannel(samples, 0);
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(analyser);
  if (u.nextTime < ctx.currentTime + 0.005) {
    if (u.nextTime > 0) {
      u.underruns += 1;
      stats.underruns += 1;
    }
    u.nextTime = ctx.currentTime + JITTER_S;
  }
  source.onended = () => {
    u.sources.delete(source);
    if (!u.silenced) stats.played += samples.length;
    if (u.sources.size === 0 && u.done && !u.silenced) finishPlayback(u);
  };
  source.start(u.nextTime);
  u.sources.add(source);
  u.nextTime += buffer.duration;
  stats.scheduled += samples.length;
}

function silence(u) {
  u.silenced = true;
  for (const source of u.sources) source.stop();
  u.sources.clear();
}

function drawScope() {
  const canvas = $("scope");
  const g = canvas.getContext("2d");
  const data = new Float32Array(audio.analyser.fftSize);
  audio.analyser.getFloatTimeDomainData(data);
  g.fillStyle = "#10141c";
  g.fillRect(0, 0, canvas.width, canvas.height);
  g.strokeStyle = "#74c0fc";
  g.lineWidth = 2;
  g.beginPath();
  let sum = 0;
  for (let i = 0; i < data.length; i++) {
    const x = (i / (data.length - 1)) * canvas.width;
    const y = (0.5 - data[i] / 2) * canvas.height;
    if (i === 0) g.moveTo(x, y);
    else g.lineTo(x, y);
    sum += data[i] * data[i];
  }
  g.stroke();
  const dbfs = 10 * Math.log10(sum / data.length + 1e-12); // -120 (silence) .. 0 (full scale)
  $("level").style.width = `${Math.max(0, Math.min(100, ((dbfs + 60) / 60) * 100))}%`;
  requestAnimationFrame(drawScope);
}

// -- one utterance: connect, speak, play, close ---------------------------------------------------------------------

async function speak(event) {
  event.preventDefault();
  if (current) return;
  showError(null);
  const req = readRequest();
  if (info.api_key_required && !$("apikey").value) {
    showError("This server needs an API key: enter it in the API key field.");
    return;
  }
  await ensureAudio();
  const u = {
    req, ws: null, chunks: [], samples: 0, sentAt: 0, firstAt: 0, endAt: 0, nextTime: 0, underruns: 0,
    sources: new Set(), done: false, silenced: false, result: null, lastError: null,
  };
  current = u;
  setState("speaking");
  setStatus("Connecting…");
  $("download").hidden = true;

  const ws = new WebSocket(socketUrl(), subprotocols());
  ws.binaryType = "arraybuffer";
  u.ws = ws;
  ws.onopen = () => {
    stats.events.push("open");
    ws.send(JSON.stringify(req));
    u.sentAt = performance.now();
    stats.events.push("speak");
    setStatus("Generating…");
  };
  ws.onmessage = (msg) => (typeof msg.data === "string" ? onJson(u, JSON.parse(msg.data)) : onBinary(u, msg.data));
  ws.onclose = (ev) => onClose(u, ev);
}

function isEndMarker(data) {
  const marker = info.protocol.end_of_utterance;
  if (data.byteLength !== marker.length) return false;
  return new TextDecoder().decode(data) === marker;
}

function onBinary(u, data) {
  if (stats.state === "stopping") return; // the stopped utterance's tail: discarded up to {"type": "cancelled"}
  if (isEndMarker(data)) {
    u.endAt = performance.now();
    stats.events.push("end");
    endUtterance(u, "complete");
    return;
  }
  if (!u.firstAt) {
    u.firstAt = performance.now();
    stats.events.push("audio");
    setStatus("Playing while generating…");
  }
  const samples = pcmToFloat(data);
  u.chunks.push(new Int16Array(data));
  u.samples += samples.length;
  stats.received += samples.length;
  schedule(u, samples);
}

function onJson(u, msg) {
  if (msg.type === "cancelled") {
    stats.events.push("cancelled");
    endUtterance(u, "stopped");
  } else if (msg.type === "error") {
    u.lastError = msg;
    if (["engine", "decoder", "internal"].includes(msg.code)) return; // a close 1011 follows: reported there
    showError(`The server refused this request: ${msg.message} (${msg.code}).`);
    endUtterance(u, "error");
  }
}

// The server is done with this utterance (complete, stopped or refused): close the socket, let the audio play out.
function endUtterance(u, result) {
  if (u.done) return;
  u.done = true;
  u.result = result;
  u.ws.close(CLOSE.OK, "done");
  record(u);
  if (result === "complete") offerDownload(u);
  if (u.sources.size === 0 || u.silenced) finishPlayback(u);
  else {
    setState("playing");
    setStatus("Playing the rest of the buffer…");
  }
}

function finishPlayback(u) {
  if (current !== u) return;
  current = null;
  setState("idle");
  setStatus({ complete: "Done.", stopped: "Stopped.", error: "Failed." }[u.result] || "Ready.");
}

function stop() {
  const u = current;
  if (!u) return;
  silence(u);
  if (!u.done && u.ws.readyState === WebSocket.OPEN) {
    // The protocol's cancel: the server stops generating and answers {"type": "cancelled"}.
    u.ws.send(JSON.stringify({ type: "cancel" }));
    stats.events.push("cancel");
    setState("stopping");
    setStatus("Stopping…");
  } else if (!u.done) {
    endUtterance(u, "stopped"); // still connecting: nothing was asked of the server yet
  } else {
    finishPlayback(u);
  }
}

function onClose(u, ev) {
  stats.events.push(`close ${ev.code}`);
  if (u.done) return;
  silence(u);
  showError(closeMessage(ev.code, ev.reason, u.lastError));
  endUtterance(u, "error");
}

// Close codes (README, "WebSocket protocol") in words a person can act on.
function closeMessage(code, reason, lastError) {
  if (code === CLOSE.POLICY_VIOLATION && reason.startsWith(PROTOCOL.unauthorized_prefix)) {
    return "The server refused the API key: enter the key it was started with (ORPHEUS_API_KEY).";
  }
  if (code === CLOSE.POLICY_VIOLATION && reason.startsWith("unknown voice")) {
    return `Unknown voice “${$("voice").value}”: ${reason.replace(/^unknown voice '[^']*'; /, "")}.`;
  }
  if (code === CLOSE.TRY_AGAIN_LATER) {
    const why = {
      busy: "The server is busy: all its streams are in use. Try again in a moment.",
      loading: "The server is still loading its model. Try again in a moment.",
      draining: "The server is shutting down. Try again in a moment (another replica may answer).",
    };
    return why[reason] || `The server asked to retry later (${reason || "no reason given"}).`;
  }
  if (code === CLOSE.MESSAGE_TOO_BIG) return "The request was too large for the server: shorten the text.";
  if (code === CLOSE.INTERNAL_ERROR) return `The server failed while speaking: ${lastError ? lastError.message : reason || "internal error"}.`;
  if (code === CLOSE.GOING_AWAY) return "The server is shutting down: try again in a moment.";
  if (code === CLOSE_ABNORMAL) return "The connection to the server failed or dropped (is the server running?).";
  return `The server closed the connection (code ${code}${reason ? `: ${reason}` : ""}).`;
}

// -- results ---------------------------------------------------------------------------------------------------------

function record(u) {
  const audioS = u.samples / info.sample_rate;
  const row = {
    voice: u.req.voice,
    firstAudioMs: u.firstAt ? Math.round(u.firstAt - u.sentAt) : null,
    audioS,
    rtf: u.endAt && audioS > 0 ? (u.endAt - u.sentAt) / 1000 / audioS : null,
    underruns: u.underruns,
    result: u.result,
  };
  stats.utterances.push(row);
  const cells = [
    stats.utterances.length,
    row.voice,
    row.firstAudioMs === null ? "–" : `${row.firstAudioMs} ms`,
    `${audioS.toFixed(2)} s`,
    row.rtf === null ? "–" : row.rtf.toFixed(2),
    row.underruns,
    row.result,
  ];
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(Object.assign(document.createElement("td"), { textContent: String(c) }));
  $("stats").tBodies[0].prepend(tr);
}

function offerDownload(u) {
  const data = new Blob(u.chunks);
  const header = new DataView(new ArrayBuffer(44));
  const ascii = (at, s) => [...s].forEach((ch, i) => header.setUint8(at + i, ch.charCodeAt(0)));
  ascii(0, "RIFF");
  header.setUint32(4, 36 + data.size, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, 1, true); // mono
  header.setUint32(24, info.sample_rate, true);
  header.setUint32(28, info.sample_rate * 2, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  ascii(36, "data");
  header.setUint32(40, data.size, true);
  const link = $("download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([header, data], { type: "audio/wav" }));
  link.download = `orpheus-${u.req.voice}-${stats.utterances.length}.wav`;
  link.hidden = false;
}

// -- page state ------------------------------------------------------------------------------------------------------

function setState(state) {
  stats.state = state;
  $("speak").disabled = state !== "idle";
  $("stop").disabled = !["speaking", "playing"].includes(state);
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  stats.error = text;
  $("error").hidden = !text;
  $("error").textContent = text || "";
}

async function main() {
  setState("loading");
  $("form").addEventListener("submit", speak);
  $("stop").addEventListener("click", stop);
  info = await loadInfo();
  applyInfo();
  setState("idle");
  setStatus("Ready.");
}

main();
