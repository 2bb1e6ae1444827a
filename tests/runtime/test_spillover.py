"""Readiness-based spill-over (issue #12) with 3 real `orpheus-tts serve` processes (tiny random model, CPU) behind
a small TCP balancer that does what kube-proxy does with a Service: each new connection goes to a random backend
among those whose /readyz is 200 (polled, so it lags like endpoint updates do), and is refused when none is.
Clients follow the documented retry policy (docs/deploy.md: 1013 or a refused connection -> retry with jitter).

- 90% of the summed capacity: every client is admitted (no client ends up "busy");
- 120%: exactly the excess is refused, and every admitted stream gets its whole answer.
A stream place is held by an open socket (admission per socket), so clients hold theirs until all have tried."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
import urllib.error
import urllib.request

import aiohttp
import pytest
import websockets
from e2e import spillover
from test_server import FRAME_BYTES, speak
from test_server_drain import free_port, wait_ready

REPLICAS = 3
STREAMS_PER_REPLICA = 6  # capacity 18: 90% = 16 clients, 120% = 22 (4 too many)
RETRY_ATTEMPTS = 12


@pytest.fixture(scope="module")
def backends(fast_model_dir, tmp_path_factory):
    ports, procs = [free_port() for _ in range(REPLICAS)], []
    logs = tmp_path_factory.mktemp("servers")
    for port in ports:
        cmd = [sys.executable, "-m", "orpheus_tts.cli", "serve", "--model", str(fast_model_dir), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--snac-device", "cpu", "--no-cuda-graphs",
               "--no-torch-compile", "--max-input-len", "24", "--max-output-len", "64", "--max-batch-size", "4",
               "--max-streams", str(STREAMS_PER_REPLICA), "--ws-idle-timeout-s", "120",
               "--load-aware-readiness"]  # fmt: skip
        with open(logs / f"{port}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    try:
        for port, proc in zip(ports, procs, strict=True):
            asyncio.run(wait_ready(f"http://127.0.0.1:{port}", proc, timeout=180))
        yield ports
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    """Carries one client connection to a backend on `port`, bytes both ways, until either side closes."""
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(OSError):
            dst.close()

    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class Balancer:
    """kube-proxy in miniature: random ready backend per connection, readiness polled every `period` seconds."""

    def __init__(self, backends: list[int], period: float = 0.2) -> None:
        self.backends, self.period = backends, period
        self.ready: list[int] = list(backends)
        self.rejected = 0

    async def poll(self) -> None:
        async with aiohttp.ClientSession() as s:
            while True:
                ready = []
                for port in self.backends:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                            if r.status == 200:
                                ready.append(port)
                self.ready = ready
                await asyncio.sleep(self.period)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.ready:
            self.rejected += 1
            writer.close()  # no ready endpoint: the connection is refused
            return
        await splice(reader, writer, random.choice(self.ready))


async def client(url: str, release: asyncio.Event, stats: dict) -> str:
    """Gets a stream place (retrying refusals with jitter), speaks one utterance, holds the place until `release`.
    Returns "admitted" or "busy"."""
    for attempt in range(RETRY_ATTEMPTS):
        try:
            async with websockets.connect(url, open_timeout=10) as ws:
                await ws.send(speak("Hello there.", 28))  # 4 frames, min_tokens == max_tokens
                audio = 0
                while (msg := await ws.recv()) != b"__END__":
                    audio += len(msg)
                stats["audio"].append(audio)
                await release.wait()
                return "admitted"
        except websockets.ConnectionClosed as e:
            if e.rcvd is None or e.rcvd.code != 1013:
                return f"dropped: {e}"  # anything but a clean refusal is a failure
            stats["refusals_1013"] += 1
        except (OSError, websockets.InvalidHandshake, EOFError):
            stats["refused_connections"] += 1
        await asyncio.sleep(random.uniform(0, min(1.0, 0.1 * 2**attempt)))  # full jitter
    return "busy"


async def run_demand(ports: list[int], clients: int) -> tuple[list[str], dict]:
    balancer = Balancer(ports)
    poller = asyncio.create_task(balancer.poll())
    server = await asyncio.start_server(balancer.handle, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws/tts"
    release = asyncio.Event()
    stats = {"audio": [], "refusals_1013": 0, "refused_connections": 0}

    async def staggered(i: int) -> str:
        await asyncio.sleep(random.uniform(0, 1.0))  # arrivals spread over a second
        return await client(url, release, stats)

    tasks = [asyncio.create_task(staggered(i)) for i in range(clients)]
    # Every client either holds a place or has given up: then all let go.
    while sum(t.done() for t in tasks) + len(stats["audio"]) < clients:  # noqa: ASYNC110 (two sources)
        await asyncio.sleep(0.1)
    release.set()
    outcomes = await asyncio.gather(*tasks)
    poller.cancel()
    server.close()
    stats["balancer_rejections"] = balancer.rejected
    return outcomes, stats


@pytest.mark.parametrize(("demand", "clients"), [(0.9, 16), (1.2, 22)], ids=["90%", "120%"])
def test_spill_over_by_readiness(backends, demand, clients) -> None:
    capacity = REPLICAS * STREAMS_PER_REPLICA
    outcomes, stats = asyncio.run(run_demand(backends, clients))
    admitted = outcomes.count("admitted")
    assert admitted == min(clients, capacity), (outcomes, stats)
    assert outcomes.count("busy") == max(0, clients - capacity), stats
    # Nothing admitted is dropped: every admitted stream got its whole answer.
    assert stats["audio"] == [4 * FRAME_BYTES] * admitted, stats
    print(f"demand {demand:.0%}: {stats}")


# ---- the real node's scenario (tests/e2e/spillover.py) against the same servers -------------------------------------


class RoundRobin:
    """Traefik in miniature: new connections go round-robin over the backends it routes to, which follow /readyz
    (polled every `period` s, like an endpoint watch) when `follow_readiness`; with none, HTTP 503 (Traefik with
    allowEmptyServices). Without `follow_readiness` it routes to every backend: a fleet without load-aware
    readiness, where a full pod stays ready."""

    def __init__(self, backends: list[int], follow_readiness: bool, period: float = 0.3) -> None:
        self.backends, self.follow, self.period = backends, follow_readiness, period
        self.routes: list[int] = list(backends)
        self.turn = 0

    def ready_backends(self) -> list[int]:
        ready = []
        for port in self.backends:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5):
                    ready.append(port)  # urlopen raises HTTPError (an OSError) on 503
        return ready

    def loads(self) -> dict[str, int]:
        out = {}
        for port in self.backends:
            try:
                r = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
            except urllib.error.HTTPError as e:
                r = e  # "full" answers 503 with the same body
            with r:
                out[str(port)] = json.loads(r.read())["active_streams"]
        return out

    def settled(self) -> bool:
        return not self.follow or sorted(self.routes) == sorted(self.ready_backends())

    async def watch(self) -> None:
        while self.follow:
            self.routes = await asyncio.to_thread(self.ready_backends)
            await asyncio.sleep(self.period)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.routes:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()
            return
        self.turn = (self.turn + 1) % len(self.routes)
        await splice(reader, writer, self.routes[self.turn])


async def run_scenario(ports: list[int], follow_readiness: bool) -> spillover.Ramp:
    balancer = RoundRobin(ports, follow_readiness)
    watcher = asyncio.create_task(balancer.watch())
    server = await asyncio.start_server(balancer.handle, "127.0.0.1", 0)
    gateway = spillover.Gateway("tts.local", "127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        return await spillover.run(spillover.Fleet(gateway, balancer.loads, balancer.settled), STREAMS_PER_REPLICA)
    finally:
        watcher.cancel()
        server.close()


def test_the_real_nodes_scenario_against_server_processes(backends) -> None:
    """tests/e2e/spillover.py, the scenario the real node runs, here with a round-robin gateway that follows
    readiness: the checks it makes there pass here."""
    ramp = asyncio.run(run_scenario(backends, follow_readiness=True))
    print(ramp.summary())
    assert spillover.problems(ramp) == [], ramp.summary()


def test_the_scenario_catches_a_fleet_without_load_aware_readiness(backends) -> None:
    """The same scenario where full pods stay ready: round robin sends new clients to the full pod, and they are
    refused (1013) although the fleet has room, which the 90% check reports."""
    ramp = asyncio.run(run_scenario(backends, follow_readiness=False))
    print(ramp.summary())
    refused = [c.attempts for c in ramp.wave("90%") if c.attempts]
    assert refused and all(a == "1013 busy" for attempts in refused for a in attempts), ramp.summary()
    assert any(p.startswith("90%: clients refused") for p in spillover.problems(ramp))
