"""Readiness-based spill-over (issue #12) as one scenario that any fleet of 3 servers behind a gateway can run: the real
node's runtime pods behind their Service and Traefik (test_orpheus.py), and local server processes behind a small
round-robin balancer (tests/runtime/test_spillover.py, which also runs it without load-aware readiness to show that
the scenario catches a fleet without it).

The scenario, with S stream places per pod and capacity C = 3 S (every client is a real `websockets` client of the
gateway; a client holds its place by keeping its socket open, as the server admits per socket):

1. fill: C clients arrive, one after the other; each speaks one short utterance and stays connected.
2. departures: every client except those on the first client's pod leaves (short streams end, long ones go on):
   one pod is full, the other two are empty. This is the skew that streams of different lengths leave behind, and
   the one a round-robin gateway handles worst: it keeps sending every third new client to the full pod.
3. demand rises to 90% of C (ceil: at least 90%), then to 120% of C: new clients arrive one after the other.
   Expected: up to 90%, no client is refused even once (not even a refusal that a retry would hide); at 120%,
   exactly the excess (120% - 100%) is refused, each refusal clean (the server's 1013 or the gateway's 503).
4. every admitted client speaks again on the socket it has held throughout (while pods left and rejoined the
   gateway's endpoints) and gets its whole answer: nothing admitted was dropped.

Timing (why this is deterministic on 2 shared cores, whatever their load): arrivals are serialised, and a client
arrives only when
  (a) the previous client has been answered, so its pod has counted it, and that pod's /readyz already says "full"
      if it took the last place (the server updates readiness when it admits); and
  (b) the fleet has "settled": the gateway routes to exactly the pods whose /readyz answers 200 at that moment.
Between that check and the connection nothing changes readiness: no other client connects or leaves (departures
happen only between phases, followed by a settle), and a pod's answer changes only when its stream count crosses
a watermark. So every pod the gateway can pick has a free place: below capacity no client can be refused, and once
every pod is full the gateway has no backend and answers 503 itself. The one outside event, a kubelet probe that
fails for another reason (a timeout on a busy CPU), only takes a pod out of the gateway, never puts a full one in.
This spaces arrivals longer than the readiness loop (the runtime's probe every 2 s acting on the first answer, the
kubelet's status update, the EndpointSlice, Traefik's watch and its 2 s providers throttle: about 5 s after an
arrival that fills a pod or a departure that frees one, about 0 s after any other arrival). The scenario waits for
that loop instead of sleeping for a guessed worst case, prints the longest wait, and fails if one exceeds
`settle_timeout`. What is tested is readiness; clients that arrive faster than the loop can still meet a full pod,
get 1013 and retry (docs/deploy.md), which tests/runtime/test_spillover.py covers with random arrivals.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from orpheus_tts.audio import SAMPLES_PER_FRAME

TOKENS = 28  # min_tokens == max_tokens: exactly TOKENS // 7 frames, so the answer's length is known
REQUEST = json.dumps({"text": "Spill over.", "voice": "tara", "max_tokens": TOKENS, "min_tokens": TOKENS})
ANSWER_BYTES = TOKENS // 7 * SAMPLES_PER_FRAME * 2  # 16-bit PCM


@dataclass(frozen=True)
class Gateway:
    """Where clients connect: `address:port` over TCP, with `host` as the Host header the gateway routes on."""

    host: str
    address: str
    port: int
    path: str = "/ws/tts"


@dataclass
class Fleet:
    """What the scenario needs from the system under test. `loads` and `settled` may block (they run in a thread)."""

    gateway: Gateway
    loads: Callable[[], dict[str, int]]  # pod -> admitted streams, from each pod's own /readyz
    settled: Callable[[], bool]  # the gateway routes to exactly the pods whose /readyz answers 200


@dataclass
class Client:
    index: int
    phase: str
    attempts: list[str] = field(default_factory=list)  # why each refused or failed attempt ended
    pod: str | None = None
    answers: list[int] = field(default_factory=list)  # PCM bytes of each answered utterance
    ws: ClientConnection | None = None

    @property
    def outcome(self) -> str:
        if self.ws is not None or self.answers:
            return "admitted"
        if self.attempts and all(is_clean_refusal(a) for a in self.attempts):
            return "busy"
        return "failed"


@dataclass
class Ramp:
    per_pod: int
    pods: int
    clients: list[Client] = field(default_factory=list)
    settle_lags: list[float] = field(default_factory=list)
    full_pod: str | None = None

    @property
    def capacity(self) -> int:
        return self.per_pod * self.pods

    def wave(self, phase: str) -> list[Client]:
        return [c for c in self.clients if c.phase == phase]

    def summary(self) -> str:
        counts = {p: Counter(c.outcome for c in self.wave(p)) for p in ("fill", "90%", "120%")}
        refusals = Counter(a for c in self.clients for a in c.attempts)
        lag = max(self.settle_lags, default=0.0)
        return f"capacity {self.capacity}: {counts}; refusals {dict(refusals)}; longest settle {lag:.1f}s"


def is_clean_refusal(reason: str) -> bool:
    return reason in ("1013 busy", "gateway 503")


def demand_levels(capacity: int) -> tuple[int, int]:
    """Total demand (clients wanting a stream at once) at 90% (at least) and at 120% of `capacity`."""
    return math.ceil(0.9 * capacity - 1e-9), math.ceil(1.2 * capacity - 1e-9)


async def speak(ws: ClientConnection) -> int:
    """One utterance on an admitted socket; the PCM bytes of its answer. Raises on anything but a whole answer."""
    await ws.send(REQUEST)
    size = 0
    while True:
        message = await asyncio.wait_for(ws.recv(), 120)
        if isinstance(message, bytes):
            if message == b"__END__":
                return size
            size += len(message)
        elif json.loads(message).get("type") == "error":
            raise RuntimeError(f"error message: {message}")


async def attempt(gw: Gateway) -> tuple[ClientConnection | None, int, str]:
    """One connection: (the admitted socket, the first answer's size, "") or (None, 0, why it ended)."""
    try:
        ws = await connect(f"ws://{gw.host}{gw.path}", host=gw.address, port=gw.port, max_size=None, open_timeout=30)
    except InvalidStatus as e:
        return None, 0, f"gateway {e.response.status_code}"
    try:
        return ws, await speak(ws), ""
    except ConnectionClosed as e:
        await ws.close()
        if e.rcvd is not None and e.rcvd.code == 1013:
            return None, 0, f"1013 {e.rcvd.reason}"
        return None, 0, f"closed: {e!r}"
    except Exception as e:  # a dropped or broken stream is recorded, never raised past the scenario
        await ws.close()
        return None, 0, f"failed: {e!r}"


async def arrive(fleet: Fleet, client: Client, attempts: int) -> None:
    """A client following the documented policy: a clean refusal is retried after a jittered pause."""
    for n in range(attempts):
        before = await asyncio.to_thread(fleet.loads)
        ws, size, why = await attempt(fleet.gateway)
        if ws is not None:
            client.ws, client.answers = ws, [size]
            after = await asyncio.to_thread(fleet.loads)
            grown = [pod for pod, load in after.items() if load == before.get(pod, 0) + 1]
            client.pod = grown[0] if len(grown) == 1 else None
            return
        client.attempts.append(why)
        if not is_clean_refusal(why):
            return
        if n + 1 < attempts:
            await asyncio.sleep(random.uniform(0.2, 1.0))


async def settle(fleet: Fleet, timeout: float) -> float:
    """Waits until the gateway routes to exactly the ready pods; how long that took."""
    start = time.monotonic()
    while not await asyncio.to_thread(fleet.settled):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"the gateway did not follow the pods' readiness within {timeout:.0f}s")
        await asyncio.sleep(0.2)
    return time.monotonic() - start


async def run(
    fleet: Fleet,
    per_pod: int,
    pods: int = 3,
    attempts: int = 3,
    settle_timeout: float = 30.0,
) -> Ramp:
    """The whole scenario (module docstring). Every socket it opened is closed when it returns or raises."""
    ramp = Ramp(per_pod, pods)

    async def arrival(phase: str) -> None:
        client = Client(len(ramp.clients), phase)
        ramp.clients.append(client)
        await arrive(fleet, client, attempts)
        ramp.settle_lags.append(await settle(fleet, settle_timeout))

    try:
        ramp.settle_lags.append(await settle(fleet, settle_timeout))
        for _ in range(ramp.capacity):
            await arrival("fill")
        ramp.full_pod = ramp.clients[0].pod
        for c in ramp.clients:
            if c.ws is not None and c.pod != ramp.full_pod:
                await c.ws.close()
                c.ws = None
        start = time.monotonic()
        while sum((await asyncio.to_thread(fleet.loads)).values()) > per_pod:
            assert time.monotonic() - start < settle_timeout, "the departed clients' places were not released"
            await asyncio.sleep(0.2)
        ramp.settle_lags.append(await settle(fleet, settle_timeout))
        staying = sum(c.ws is not None for c in ramp.clients)
        for level, phase in zip(demand_levels(ramp.capacity), ("90%", "120%"), strict=True):
            while staying + sum(c.phase in ("90%", "120%") for c in ramp.clients) < level:
                await arrival(phase)
        # Everyone still connected speaks again, all at once, on the socket held throughout.
        held = [c for c in ramp.clients if c.ws is not None]

        async def again(c: Client) -> None:
            assert c.ws is not None
            try:
                c.answers.append(await speak(c.ws))
            except Exception as e:
                c.attempts.append(f"dropped: {e!r}")

        await asyncio.gather(*(again(c) for c in held))
        return ramp
    finally:
        for c in ramp.clients:
            if c.ws is not None:
                await c.ws.close()


def problems(ramp: Ramp) -> list[str]:
    """What a finished ramp shows to be wrong; empty when the spill-over does what issue #12 asks."""
    found = []
    at_90, at_120 = demand_levels(ramp.capacity)
    fill, ninety, over = ramp.wave("fill"), ramp.wave("90%"), ramp.wave("120%")
    unplaced = [c.index for c in ramp.clients if c.outcome == "admitted" and c.pod is None]
    if unplaced:
        found.append(f"clients {unplaced} were admitted by no pod whose load grew by one")
    if any(c.attempts for c in fill):
        found.append(f"fill: refusals below capacity: {[c.attempts for c in fill if c.attempts]}")
    if any(c.attempts for c in ninety):
        found.append(f"90%: clients refused (even once): {[(c.index, c.attempts) for c in ninety if c.attempts]}")
    sent_to_full = [c.index for c in ninety + over if c.outcome == "admitted" and c.pod == ramp.full_pod]
    if sent_to_full:
        found.append(f"clients {sent_to_full} were admitted by the pod that was full")
    held = [c for c in ramp.clients if c.ws is not None]
    if len(held) != ramp.capacity:
        found.append(f"{len(held)} streams held at {at_120} clients, not the capacity {ramp.capacity}")
    busy = [c for c in over if c.outcome == "busy"]
    if len(busy) != at_120 - ramp.capacity:
        found.append(f"120%: {len(busy)} clients busy, not the excess {at_120 - ramp.capacity}")
    failed = [(c.index, c.phase, c.attempts) for c in ramp.clients if c.outcome == "failed"]
    if failed:
        found.append(f"unclean refusals or failures: {failed}")
    dropped = [(c.index, c.answers, c.attempts) for c in held if c.answers != [ANSWER_BYTES, ANSWER_BYTES]]
    if dropped:
        found.append(f"admitted streams without their whole answers (expected 2 x {ANSWER_BYTES} B): {dropped}")
    if (len(ninety) + ramp.per_pod, len(ninety) + len(over) + ramp.per_pod) != (at_90, at_120):
        found.append(
            f"the waves were {len(ninety)} and {len(over)} clients over {ramp.per_pod}, not to {at_90}, {at_120}"
        )
    return found
