"""A real single-node Kubernetes on this machine, for the end-to-end tests and for a person trying the chart.

    python -m tests.e2e.cluster up          # build (cached), start, wait until the node is Ready
    python -m tests.e2e.cluster status      # what runs, where the kubeconfig is
    python -m tests.e2e.cluster kubeconfig  # prints the admin kubeconfig's path
    python -m tests.e2e.cluster down        # stop everything and restore the machine (also after a crash)

Needs root, Linux, and the Debian packages in scripts/system-packages.txt. The pytest fixtures in conftest.py use the
same `Cluster` class.

What runs (all host processes; only workloads run in containers):
- etcd, kube-apiserver (Node,RBAC; NodeRestriction), kube-controller-manager (all controllers), kube-scheduler;
- containerd 2.x with Debian's runc, CNI bridge/host-local/loopback/portmap, kubelet (cgroupfs), kube-proxy
  (iptables);
- CoreDNS (cluster DNS, answering for cluster.local only) and Traefik (Ingress and Gateway API) on the node address.

Network safety. Every address the cluster uses is on bridges this harness creates: the node address on `otts0`,
pods on `otts-cni0` (the CNI bridge plugin makes it). Before any process starts:
- the Service and pod ranges are routed to `otts0`, so that a packet for a ClusterIP that kube-proxy has not
  programmed yet (or never will) goes nowhere instead of following the default route out of the machine;
- mangle-table rules drop forwarding to and from the external interface (the one with the default route), and any
  packet from or to a cluster range on it. They stay until `down`, which removes them last.

Cleanup (`down`) works from the state file alone, so it also runs after a crash or from another process: it kills
the processes it started (by PID), the containers (by their cgroups), unmounts everything under the harness's
directories, deletes the links, routes, netns, iptables chains (kubelet's and kube-proxy's KUBE-*, the CNI plugins'
CNI-*, ours) and restores the sysctls it found. containerd's image store is kept (under the cache directory) so
that images imported once need not be imported again; its containers are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # `python -m tests.e2e.cluster` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from k8s.control_plane import (
    SA_ISSUER,
    ControlPlaneError,
    build_binaries,
    issue_cert,
    kubeconfig,
    make_ca,
    make_service_account_key,
    write_yaml,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("ORPHEUS_CACHE", Path.home() / ".cache/orpheus-tts"))

NODE_NAME = "orpheus-e2e"
NODE_BRIDGE = "otts0"
CNI_BRIDGE = "otts-cni0"
NODE_CIDR = "10.201.0.0/24"
NODE_IP = "10.201.0.1"
POD_CIDR = "10.202.0.0/24"
SERVICE_CIDR = "10.203.0.0/24"
API_SERVICE_IP = "10.203.0.1"  # the `kubernetes` Service: the first address of SERVICE_CIDR
CLUSTER_RANGES = (NODE_CIDR, POD_CIDR, SERVICE_CIDR)
API_PORT = 6443
GATEWAY_PORT = 80  # Traefik's `web` entrypoint on NODE_IP: Ingress and Gateway API listeners
TRAEFIK_ADMIN = "127.0.0.1:18082"  # Traefik's `traefik` entrypoint on loopback: /ping and the (read-only) /api
# A route the CNI bridge's own (metric 0) route for POD_CIDR overrides once it exists.
GUARD_ROUTE_METRIC = 4000

WORKDIR = Path(os.environ.get("ORPHEUS_E2E_DIR", "/var/lib/orpheus-e2e"))
RUNDIR = Path("/run/orpheus-e2e")  # containerd state and socket (tmpfs, as containerd expects)
CONTAINERD_ROOT = CACHE / "e2e/containerd"  # image store, kept between runs
STATE_FILE = WORKDIR / "state.json"
LOCAL_VOLUMES = 6  # local PersistentVolumes of LOCAL_VOLUME_SIZE, one directory each
LOCAL_VOLUME_SIZE = "5Gi"

# Fixed paths outside our directories that the node's pieces use (see the module docstring).
FIXED_PATHS = (
    Path("/var/lib/cni"),
    Path("/run/containerd"),
    Path("/var/lib/kubelet/device-plugins"),
    Path("/var/lib/kubelet"),  # kubelet makes it for the device-plugin socket even with another --root-dir
    Path("/etc/cni/net.d/cni.lock"),
    Path("/run/netns"),  # containerd's pod network namespaces (the ones it made are unmounted first)
)
# Sysctls kubelet, kube-proxy or this harness set; their values before `up` are restored by `down`.
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.conf.all.route_localnet",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)
# iptables chains that belong to the cluster: kubelet's and kube-proxy's, the CNI plugins', ours.
CHAIN_PREFIXES = ("KUBE-", "CNI-", "ORPHEUS-E2E-")
GUARD_CHAINS = {"FORWARD": "ORPHEUS-E2E-FWD", "PREROUTING": "ORPHEUS-E2E-IN", "POSTROUTING": "ORPHEUS-E2E-OUT"}


class ClusterError(RuntimeError):
    pass


# ---- small helpers -----------------------------------------------------------------------------------------------


def sh(*args: str, check: bool = True, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(f"{shlex.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def external_interface() -> str:
    """The interface of the default route: the one no cluster packet may leave through."""
    routes = json.loads(sh("ip", "-j", "route", "show", "default").stdout or "[]")
    if not routes:
        raise ClusterError("no default route: cannot tell which interface is the external one")
    return routes[0]["dev"]


def read_sysctl(name: str) -> str | None:
    path = Path("/proc/sys") / name.replace(".", "/")
    try:
        return path.read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        (Path("/proc/sys") / name.replace(".", "/")).write_text(value)


def guard_rules(ext: str) -> dict[str, list[list[str]]]:
    """Our mangle chains' rules: nothing forwarded to or from `ext`, no cluster address on it in either direction.

    mangle runs before filter, where kube-proxy and kubelet insert their ACCEPT rules, so theirs cannot bypass these.
    """
    return {
        GUARD_CHAINS["FORWARD"]: [["-i", ext, "-j", "DROP"], ["-o", ext, "-j", "DROP"]],
        GUARD_CHAINS["PREROUTING"]: [["-i", ext, "-d", cidr, "-j", "DROP"] for cidr in CLUSTER_RANGES],
        GUARD_CHAINS["POSTROUTING"]: [
            *[["-o", ext, "-d", cidr, "-j", "DROP"] for cidr in CLUSTER_RANGES],
            *[["-o", ext, "-s", cidr, "-j", "DROP"] for cidr in CLUSTER_RANGES],
        ],
    }


def guard_counters() -> dict[str, list[int]]:
    """Packets each guard rule has dropped, by chain (in guard_rules' order)."""
    out = {}
    for chain in GUARD_CHAINS.values():
        lines = sh("iptables", "-w", "-t", "mangle", "-L", chain, "-n", "-v", "-x").stdout.splitlines()[2:]
        out[chain] = [int(line.split()[0]) for line in lines if line.strip()]
    return out


def iptables_chains(binary: str, table: str) -> list[str]:
    proc = sh(binary, "-w", "-t", table, "-S", check=False)
    return [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("-N ")]


def remove_iptables_chains(binary: str) -> list[str]:
    """Deletes every rule that jumps to a cluster chain, then the chains themselves. Returns what was removed."""
    removed = []
    for table in ("filter", "nat", "mangle", "raw"):
        lines = sh(binary, "-w", "-t", table, "-S", check=False).stdout.splitlines()
        ours = {
            line.split()[1] for line in lines if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
        }
        if not ours:
            continue
        for line in lines:
            parts = shlex.split(line)
            if parts[0] == "-A" and parts[1] not in ours and any(p in ours for p in parts):
                sh(binary, "-w", "-t", table, "-D", *parts[1:], check=False)
        for chain in ours:
            sh(binary, "-w", "-t", table, "-F", chain, check=False)
        for chain in ours:
            sh(binary, "-w", "-t", table, "-X", chain, check=False)
        removed += [f"{binary} {table} {c}" for c in sorted(ours)]
    return removed


def mounts_under(prefixes: list[Path]) -> list[str]:
    """Mount points under any of the prefixes, deepest first (mountinfo escapes spaces as \\040)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point == str(p) or point.startswith(str(p) + "/") for p in prefixes):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if alive:
            time.sleep(0.1)
    return alive


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def pids_with_arg(needle: str) -> list[int]:
    """PIDs whose command line contains `needle` (our containerd socket path: the shims we started)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return [p for p in found if p != os.getpid()]


def cgroup_dirs() -> list[Path]:
    """The pods' cgroups (kubelet's cgroupfs driver: kubepods under each v1 hierarchy, and the v2 one)."""
    root = Path("/sys/fs/cgroup")
    dirs = []
    for hierarchy in [root, *[p for p in root.iterdir() if p.is_dir()]] if root.exists() else []:
        pods = hierarchy / "kubepods"
        if pods.is_dir():
            dirs += sorted((d for d in pods.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True)
            dirs.append(pods)
    return dirs


# ---- the cluster -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cluster:
    """One single-node cluster; `up()` and `down()` are idempotent and `down()` works from the state file alone."""

    workdir: Path = WORKDIR

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{NODE_IP}:{API_PORT}"

    @property
    def gateway_url(self) -> str:
        return f"http://{NODE_IP}:{GATEWAY_PORT}"

    @property
    def containerd_socket(self) -> Path:
        return RUNDIR / "containerd/containerd.sock"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    def load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def save_state(self, state: dict) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_file)

    # ---- binaries ------------------------------------------------------------------------------------------

    @staticmethod
    def build() -> tuple[Path, Path]:
        """(control plane bin dir, node bin dir), built if not cached."""
        control = build_binaries()
        proc = subprocess.run(["bash", str(REPO / "tests/k8s/build-node.sh")], stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise ClusterError(f"tests/k8s/build-node.sh failed ({proc.returncode}); see its output above")
        return control, Path(proc.stdout.strip().splitlines()[-1])

    def binary(self, name: str) -> str:
        state = self.load_state()
        for d in (state["node_bin"], state["control_bin"]):
            if (Path(d) / name).exists():
                return str(Path(d) / name)
        raise ClusterError(f"no {name} in the built binaries")

    # ---- up ------------------------------------------------------------------------------------------------

    def up(self, timeout: float = 180) -> Cluster:
        if os.geteuid() != 0:
            raise ClusterError("the e2e cluster needs root (it creates bridges, routes, iptables rules, mounts)")
        if self.load_state():
            log("state of an earlier run found: tearing it down first")
            self.down()
        control_bin, node_bin = self.build()
        start = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = {
            "control_bin": str(control_bin),
            "node_bin": str(node_bin),
            "external": external_interface(),
            "sysctls": {name: read_sysctl(name) for name in SYSCTLS},
            "fixed_paths_existed": [str(p) for p in FIXED_PATHS if p.exists()],
            "netns_before": sorted(os.listdir("/run/netns")) if Path("/run/netns").is_dir() else [],
            "pids": {},
            "steps": [],
        }
        self.save_state(state)
        try:
            self._network_guard(state)
            self._pki()
            self._start_control_plane(state, timeout)
            self._start_node(state, timeout)
            self._install_addons(state, timeout)
        except BaseException:
            log("up failed: tearing down")
            self.down()
            raise
        log(f"cluster up in {time.monotonic() - start:.0f}s; KUBECONFIG={self.admin_kubeconfig}")
        return self

    def _step(self, state: dict, step: str) -> None:
        state["steps"].append(step)
        self.save_state(state)

    def _network_guard(self, state: dict) -> None:
        """The bridge, the routes and the drop rules: all in place before any cluster process starts."""
        ext = state["external"]
        self._step(state, "bridge")
        sh("ip", "link", "add", NODE_BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{NODE_IP}/{ipaddress.ip_network(NODE_CIDR).prefixlen}", "dev", NODE_BRIDGE)
        sh("ip", "link", "set", NODE_BRIDGE, "up")
        sh("ip", "route", "add", SERVICE_CIDR, "dev", NODE_BRIDGE)
        sh("ip", "route", "add", POD_CIDR, "dev", NODE_BRIDGE, "metric", str(GUARD_ROUTE_METRIC))
        self._step(state, "guard")
        for hook, chain in GUARD_CHAINS.items():
            sh("iptables", "-w", "-t", "mangle", "-N", chain)
            for rule in guard_rules(ext)[chain]:
                sh("iptables", "-w", "-t", "mangle", "-A", chain, *rule)
            sh("iptables", "-w", "-t", "mangle", "-I", hook, "1", "-j", chain)
        # No IPv6 in the cluster at all; and nothing IPv6 forwarded through the external interface either.
        sh("ip6tables", "-w", "-t", "mangle", "-N", GUARD_CHAINS["FORWARD"])
        for rule in guard_rules(ext)[GUARD_CHAINS["FORWARD"]]:
            sh("ip6tables", "-w", "-t", "mangle", "-A", GUARD_CHAINS["FORWARD"], *rule)
        sh("ip6tables", "-w", "-t", "mangle", "-I", "FORWARD", "1", "-j", GUARD_CHAINS["FORWARD"])
        self._step(state, "sysctls")
        # Pod -> ClusterIP -> pod is routed through the host; same-bridge replies must pass kube-proxy's NAT.
        write_sysctl("net.ipv4.ip_forward", "1")
        write_sysctl("net.bridge.bridge-nf-call-iptables", "1")

    def _pki(self) -> None:
        d = self.pki
        d.mkdir(parents=True, exist_ok=True)
        make_ca(d)
        apiserver_san = ",".join(
            [
                f"IP:{NODE_IP}",
                f"IP:{API_SERVICE_IP}",
                "IP:127.0.0.1",
                "DNS:localhost",
                *[f"DNS:{n}" for n in ("kubernetes", "kubernetes.default", "kubernetes.default.svc")],
                "DNS:kubernetes.default.svc.cluster.local",
            ]
        )
        issue_cert(d, "apiserver", "/CN=kube-apiserver", "serverAuth", f"subjectAltName={apiserver_san}")
        issue_cert(
            d, "kubelet-serving", f"/CN={NODE_NAME}", "serverAuth", f"subjectAltName=IP:{NODE_IP},DNS:{NODE_NAME}"
        )
        clients = {
            "admin": "/O=system:masters/CN=orpheus-e2e-admin",
            "apiserver-kubelet-client": "/O=system:masters/CN=kube-apiserver-kubelet-client",
            "controller-manager": "/CN=system:kube-controller-manager",
            "scheduler": "/CN=system:kube-scheduler",
            "kube-proxy": "/CN=system:kube-proxy",
            "kubelet": f"/O=system:nodes/CN=system:node:{NODE_NAME}",
            "coredns": "/CN=system:orpheus-e2e:coredns",
        }
        for name, subject in clients.items():
            issue_cert(d, name, subject, "clientAuth")
            write_yaml(
                self.workdir / f"{name}.kubeconfig",
                kubeconfig(
                    self.server,
                    d / "ca.crt",
                    {"client-certificate": str(d / f"{name}.crt"), "client-key": str(d / f"{name}.key")},
                ),
            )
        make_service_account_key(d)

    def _spawn(self, state: dict, name: str, args: list[str], env: dict | None = None) -> None:
        """Starts a host process in its own session (it outlives `up` when run from the CLI); logs in workdir."""
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [self.binary(name), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        state["pids"][name] = proc.pid
        self.save_state(state)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _check_alive(self, state: dict) -> None:
        for name, pid in state["pids"].items():
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                raise ClusterError(f"{name} exited:\n{self.log_tail(name)}")

    def _wait(self, state: dict, what: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            self._check_alive(state)
            try:
                if ready():
                    return
            except Exception as e:
                last = e
            time.sleep(0.3)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")

    def _https_ok(self, url: str) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        with urllib.request.urlopen(url, context=ctx, timeout=3) as resp:
            return resp.status == 200

    def _start_control_plane(self, state: dict, timeout: float) -> None:
        self._step(state, "control-plane")
        pki = self.pki
        ports = {"etcd": 23790, "etcd-peer": 23800, "kcm": 10257, "scheduler": 10259}
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        self._spawn(
            state,
            "etcd",
            [
                "--name=e2e",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync",  # throwaway data; fsync dominates etcd latency on a shared disk
                "--log-level=warn",
            ],
        )
        self._spawn(
            state,
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--bind-address={NODE_IP}",
                f"--advertise-address={NODE_IP}",
                f"--secure-port={API_PORT}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        self._wait(state, "kube-apiserver /readyz", lambda: self._https_ok(f"{self.server}/readyz"), timeout)
        common = ["--leader-elect=false", "--bind-address=127.0.0.1", "--profiling=false"]
        self._spawn(
            state,
            "kube-controller-manager",
            [
                *common,
                f"--kubeconfig={self.workdir / 'controller-manager.kubeconfig'}",
                f"--secure-port={ports['kcm']}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                "--use-service-account-credentials=true",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--flex-volume-plugin-dir={self.workdir / 'flexvolume'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
            ],
        )
        self._spawn(
            state,
            "kube-scheduler",
            [
                *common,
                f"--kubeconfig={self.workdir / 'scheduler.kubeconfig'}",
                f"--secure-port={ports['scheduler']}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
            ],
        )

    def _start_node(self, state: dict, timeout: float) -> None:
        self._step(state, "node")
        pause_image = Path(state["node_bin"], "pause.image").read_text().strip()
        cni_conf = self.workdir / "cni/net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-orpheus-e2e.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "orpheus-e2e",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": CNI_BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,  # nothing in the cluster has any business reaching outside it
                            "hairpinMode": True,  # a pod reaching itself through its Service
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.workdir / "cni/ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=1,
            )
        )
        rt = "plugins.'io.containerd.cri.v1.runtime'"
        (self.workdir / "containerd.toml").write_text(
            f"""version = 3
root = "{CONTAINERD_ROOT}"
state = "{RUNDIR / "containerd"}"
disabled_plugins = ["io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self.containerd_socket}"

[{rt}]
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower a sandbox's oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  enable_selinux = false
  [{rt}.containerd]
    default_runtime_name = "runc"
    [{rt}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{rt}.containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [{rt}.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{cni_conf}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause_image}"
"""
        )
        CONTAINERD_ROOT.mkdir(parents=True, exist_ok=True)
        path = f"{state['node_bin']}:/usr/sbin:/usr/bin:/sbin:/bin"
        self._spawn(state, "containerd", ["--config", str(self.workdir / "containerd.toml")], env={"PATH": path})
        self._wait(state, "containerd", lambda: self.ctr("version", check=False).returncode == 0, timeout)
        self.remove_containers()  # what an earlier run (crashed, or killed) may have left in the kept image store
        self.import_image(Path(state["node_bin"], "pause.tar"), pause_image)

        kubelet_dir = self.workdir / "kubelet"
        kubelet_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "resolv.conf").write_text("# no upstream DNS: the e2e cluster reaches nothing outside\n")
        kubelet_config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(self.pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(self.pki / "kubelet-serving.key"),
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,  # this VM mounts cgroup v1 (hybrid)
            "clusterDNS": [NODE_IP],
            "clusterDomain": "cluster.local",
            "resolvConf": str(self.workdir / "resolv.conf"),
            "volumePluginDir": str(self.workdir / "flexvolume"),
            # A shared CI disk: never evict or garbage-collect the imported images because of it.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            # A moment of disk pressure (other builds on the machine) taints the node for this long after it ends.
            "evictionPressureTransitionPeriod": "10s",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
            "rotateCertificates": False,
        }
        write_yaml(self.workdir / "kubelet-config.yaml", kubelet_config)
        self._spawn(
            state,
            "kubelet",
            [
                f"--config={self.workdir / 'kubelet-config.yaml'}",
                f"--kubeconfig={self.workdir / 'kubelet.kubeconfig'}",
                f"--root-dir={kubelet_dir}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--cert-dir={self.workdir / 'kubelet-certs'}",
                "--v=1",
            ],
            env={"PATH": path},
        )
        proxy_config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.workdir / "kube-proxy.kubeconfig")},
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_IP,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "clusterCIDR": POD_CIDR,
            "nodePortAddresses": [NODE_CIDR],  # never on the external interface
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        write_yaml(self.workdir / "kube-proxy-config.yaml", proxy_config)
        self._spawn(state, "kube-proxy", [f"--config={self.workdir / 'kube-proxy-config.yaml'}"], env={"PATH": path})
        self._wait(state, "the node to be Ready", self._node_ready, timeout)

    def _node_ready(self) -> bool:
        proc = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if proc.returncode != 0:
            return False
        conditions = json.loads(proc.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _install_addons(self, state: dict, timeout: float) -> None:
        """RBAC for CoreDNS and Traefik, the Gateway API CRDs, the ingress and gateway classes, local volumes."""
        self._step(state, "addons")
        self.kubectl("apply", "-f", str(HERE / "manifests/addons.yaml"))
        self.kubectl("apply", "--server-side", "-f", str(gateway_api_crds()))
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        self.kubectl("apply", "-f", str(HERE / "manifests/gateway.yaml"))
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(self._local_volumes()))

        ca = self.pki / "ca.crt"
        token = self.kubectl("-n", "kube-system", "create", "token", "traefik", "--duration=48h").stdout.strip()
        (self.workdir / "traefik.token").write_text(token)
        (self.workdir / "traefik.token").chmod(0o600)
        corefile = f"""\
.:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.workdir / "coredns.kubeconfig"}
        pods insecure
    }}
    cache 30
    loadbalance
}}
"""
        (self.workdir / "Corefile").write_text(corefile)
        self._spawn(state, "coredns", ["-conf", str(self.workdir / "Corefile")])
        k8s = {"endpoint": self.server, "token": str(self.workdir / "traefik.token"), "certAuthFilePath": str(ca)}
        traefik = {
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
            "entryPoints": {
                # readTimeout 0: Traefik v3 otherwise ends every request, WebSockets included, after 60 s
                # (docs/deploy.md, the Traefik preset).
                "web": {
                    "address": f"{NODE_IP}:{GATEWAY_PORT}",
                    "transport": {"respondingTimeouts": {"readTimeout": 0}},
                },
                "traefik": {"address": TRAEFIK_ADMIN},
            },
            "ping": {"entryPoint": "traefik"},
            # The API on the loopback `traefik` entrypoint: the spill-over test reads which pods Traefik routes to.
            "api": {"insecure": True, "dashboard": False},
            "log": {"level": "INFO"},
            # allowEmptyServices: while no pod of a Service is ready (with load-aware readiness: all are full),
            # answer 503 rather than drop the route and answer 404 (docs/deploy.md, load-aware routing).
            "providers": {"kubernetesIngress": {**k8s, "allowEmptyServices": True}, "kubernetesGateway": dict(k8s)},
        }
        write_yaml(self.workdir / "traefik.yaml", traefik)
        self._spawn(state, "traefik", [f"--configfile={self.workdir / 'traefik.yaml'}"])

        def dns_and_gateway_ready() -> bool:
            with urllib.request.urlopen("http://127.0.0.1:18181/ready", timeout=2) as r1:
                with urllib.request.urlopen(f"http://{TRAEFIK_ADMIN}/ping", timeout=2) as r2:
                    return r1.status == 200 and r2.status == 200

        self._wait(state, "CoreDNS and Traefik", dns_and_gateway_ready, timeout)
        self._wait(
            state,
            "the default ServiceAccount",
            lambda: self.kubectl("get", "sa", "default", check=False).returncode == 0,
            timeout,
        )

    def _local_volumes(self) -> list[dict]:
        docs = []
        for i in range(LOCAL_VOLUMES):
            path = self.workdir / f"volumes/local-{i}"
            path.mkdir(parents=True, exist_ok=True)
            node_term = {
                "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]
            }
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": f"local-{i}"},
                    "spec": {
                        "capacity": {"storage": LOCAL_VOLUME_SIZE},
                        "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": "local",
                        "local": {"path": str(path)},
                        "nodeAffinity": {"required": {"nodeSelectorTerms": [node_term]}},
                    },
                }
            )
        return docs

    # ---- clients -------------------------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120):
        return sh(
            self.binary("kubectl"),
            f"--kubeconfig={self.admin_kubeconfig}",
            *args,
            check=check,
            input=input,
            timeout=timeout,
        )

    def ctr(self, *args: str, check: bool = True, timeout: float = 600):
        return sh(
            self.binary("ctr"),
            "--address",
            str(self.containerd_socket),
            "-n",
            "k8s.io",
            *args,
            check=check,
            timeout=timeout,
        )

    def has_image(self, name: str) -> bool:
        return name in self.ctr("images", "ls", "-q", f"name=={name}", check=False).stdout.split()

    def import_image(self, archive: Path, name: str) -> None:
        """Imports an OCI archive into containerd's k8s.io namespace unless the image is there already."""
        if self.has_image(name):
            return
        t = time.monotonic()
        self.ctr("images", "import", str(archive))
        if not self.has_image(name):
            raise ClusterError(f"importing {archive} did not produce {name}: {self.ctr('images', 'ls', '-q').stdout}")
        log(f"imported {name} in {time.monotonic() - t:.1f}s")

    def prune_images(self, prefix: str, keep: list[str]) -> None:
        """Removes the images named prefix* other than `keep` (earlier builds' tags; containerd frees their layers)."""
        old = [n for n in self.ctr("images", "ls", "-q").stdout.split() if n.startswith(prefix) and n not in keep]
        if old:
            self.ctr("images", "rm", *old, check=False)
            log(f"removed old images: {' '.join(old)}")

    def remove_containers(self) -> None:
        """Kills and removes every container and sandbox in containerd's k8s.io namespace (images stay)."""
        for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
        for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "rm", "-f", task, check=False)
        for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "rm", container, check=False)
        listing = self.ctr("sandboxes", "ls", check=False).stdout.splitlines()[1:]  # a table; no -q
        for sandbox in [line.split()[0] for line in listing if line.strip()]:
            self.ctr("sandboxes", "rm", "-f", sandbox, check=False)

    # ---- down ----------------------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stops and removes everything `up` made; works from the state file alone. Returns what it could not undo."""
        state = self.load_state()
        problems: list[str] = []
        pids = state.get("pids", {})
        start = time.monotonic()

        def stop(names: list[str], grace: float) -> None:
            t = time.monotonic()
            live = [pids[n] for n in names if n in pids]
            for pid in live:
                kill_pid(pid, signal.SIGTERM)
            for pid in wait_gone(live, grace):
                kill_pid(pid)
            for pid in wait_gone(live, 5):
                problems.append(f"pid {pid} survived SIGKILL")
            if live:
                log(f"stopped {', '.join(n for n in names if n in pids)} in {time.monotonic() - t:.1f}s")

        # Gateway, DNS, proxy and kubelet first (so nothing restarts containers), then the containers, then the rest.
        stop(["traefik", "coredns", "kube-proxy", "kubelet", "kube-scheduler", "kube-controller-manager"], 10)
        if "containerd" in pids and Path(f"/proc/{pids['containerd']}").exists() and state.get("node_bin"):
            with contextlib.suppress(Exception):
                self.remove_containers()
        # Whatever still runs in a pod's cgroup (containerd gone, or a container that would not die) dies by PID.
        for d in cgroup_dirs():
            with contextlib.suppress(OSError):
                for pid in (d / "cgroup.procs").read_text().split():
                    kill_pid(int(pid))
        stop(["containerd"], 10)
        shims = pids_with_arg(str(self.containerd_socket))
        for pid in shims:
            kill_pid(pid)
        wait_gone(shims, 5)
        stop(["kube-apiserver", "etcd"], 1)  # their data is thrown away: no graceful shutdown to wait for

        # Mounts: pods' volumes, container rootfs and shm, shim dirs, the netns the CNI made.
        netns_before = set(state.get("netns_before", []))
        new_netns = [Path("/run/netns", n) for n in (os.listdir("/run/netns") if Path("/run/netns").is_dir() else [])]
        new_netns = [p for p in new_netns if p.name not in netns_before and p.name.startswith("cni-")]
        mount_roots = [self.workdir, RUNDIR, Path("/run/containerd"), *new_netns, CONTAINERD_ROOT]
        for _ in range(3):
            points = mounts_under(mount_roots)
            if not points:
                break
            for point in points:
                if sh("umount", point, check=False).returncode != 0:
                    sh("umount", "-l", point, check=False)
        for point in mounts_under(mount_roots):
            problems.append(f"still mounted: {point}")
        for ns in new_netns:
            with contextlib.suppress(OSError):
                ns.unlink()

        # cgroups (empty now), links, routes (they go with the bridge), iptables, sysctls.
        for d in cgroup_dirs():
            with contextlib.suppress(OSError):
                d.rmdir()
        for link in (CNI_BRIDGE, NODE_BRIDGE):
            if Path(f"/sys/class/net/{link}").exists():
                sh("ip", "link", "del", link, check=False)
        for cidr in (SERVICE_CIDR, POD_CIDR):
            sh("ip", "route", "del", cidr, check=False)
        for binary in ("iptables", "ip6tables"):
            remove_iptables_chains(binary)
        for name, value in state.get("sysctls", {}).items():
            if value is not None and read_sysctl(name) != value:
                write_sysctl(name, value)

        # Fixed paths (those that did not exist before `up`), then our directories.
        existed = set(state.get("fixed_paths_existed", []))
        for path in FIXED_PATHS:
            if str(path) in existed or not path.exists():
                continue
            if mounts_under([path]):
                problems.append(f"not removing {path}: something is still mounted under it")
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            if path.exists():
                problems.append(f"could not remove {path}")
        for d in (RUNDIR, self.workdir):
            shutil.rmtree(d, ignore_errors=True)
            if d.exists():
                problems.append(f"could not remove {d}")
        if problems:
            log("down left: " + "; ".join(problems))
        if state:
            log(f"cluster down in {time.monotonic() - start:.0f}s")
        return problems

    def diagnostics(self, tail: int = 60) -> str:
        """Events, descriptions and logs of everything in the workload namespaces, and the node processes' log
        tails: what a failed test prints."""
        out = []

        def run(*args: str) -> None:
            proc = self.kubectl(*args, check=False, timeout=60)
            out.append(f"$ kubectl {shlex.join(args)}\n{proc.stdout}{proc.stderr}")

        run("get", "nodes,pv", "-o", "wide")
        namespaces = self.kubectl("get", "ns", "-o", "name", check=False).stdout.split()
        skip = {"namespace/kube-public", "namespace/kube-node-lease", "namespace/kube-system"}
        for ns in [n.removeprefix("namespace/") for n in namespaces if n not in skip]:
            kinds = "all,pvc,ingress,configmap"
            if "orpheustts" in self.kubectl("api-resources", "-o", "name", check=False).stdout:
                kinds += ",orpheustts"
            run("-n", ns, "get", kinds, "-o", "wide")
            run("-n", ns, "get", "events", "--sort-by=.lastTimestamp")
            run("-n", ns, "describe", kinds.replace(",configmap", ""))
            for pod in self.kubectl("-n", ns, "get", "pods", "-o", "name", check=False).stdout.split():
                run("-n", ns, "logs", pod, "--all-containers", "--prefix", f"--tail={tail}")
                run("-n", ns, "logs", pod, "--all-containers", "--prefix", f"--tail={tail}", "--previous")
        for name in self.load_state().get("pids", {}):
            out.append(f"--- {name} log (last 20 lines) ---\n{self.log_tail(name, 20)}")
        return "\n".join(out)

    # ---- status --------------------------------------------------------------------------------------------

    def status(self) -> dict:
        state = self.load_state()
        return {
            "running": {n: p for n, p in state.get("pids", {}).items() if Path(f"/proc/{p}").exists()},
            "stopped": [n for n, p in state.get("pids", {}).items() if not Path(f"/proc/{p}").exists()],
            "kubeconfig": str(self.admin_kubeconfig) if state else None,
            "gateway": self.gateway_url if state else None,
            "logs": str(self.workdir / "logs") if state else None,
        }


def leftovers() -> list[str]:
    """What of a cluster is still on this machine (empty after a clean `down`)."""
    found = []
    for link in (NODE_BRIDGE, CNI_BRIDGE):
        if Path(f"/sys/class/net/{link}").exists():
            found.append(f"link {link}")
    routes = sh("ip", "route", "show").stdout
    found += [f"route {cidr}" for cidr in (SERVICE_CIDR, POD_CIDR, NODE_CIDR) if cidr in routes]
    for binary in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            found += [
                f"{binary} -t {table} chain {c}" for c in iptables_chains(binary, table) if c.startswith(CHAIN_PREFIXES)
            ]
    found += [f"mount {m}" for m in mounts_under([WORKDIR, RUNDIR, Path("/run/containerd")])]
    found += [f"cgroup {d}" for d in cgroup_dirs()]
    found += [f"path {p}" for p in (WORKDIR, RUNDIR) if p.exists()]
    return found


def gateway_api_crds() -> Path:
    """The standard-channel Gateway API CRDs of the gateway-api version Traefik is built with (module cache)."""
    gomod = (REPO / "tests/k8s/traefik/go.mod").read_text()
    version = next(
        line.split()[1] for line in gomod.splitlines() if line.strip().startswith("sigs.k8s.io/gateway-api ")
    )
    d = CACHE / f"go/mod/sigs.k8s.io/gateway-api@{version}/config/crd/standard"
    if not d.is_dir():
        raise ClusterError(f"{d} is missing: run tests/k8s/build-node.sh (it downloads Traefik's modules)")
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "kubeconfig"])
    args = parser.parse_args(argv)
    cluster = Cluster()
    if args.command == "up":
        cluster.up()
        print(cluster.admin_kubeconfig)
    elif args.command == "down":
        problems = cluster.down()
        return 1 if problems else 0
    elif args.command == "status":
        print(json.dumps(cluster.status(), indent=1))
    else:
        print(cluster.admin_kubeconfig)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ClusterError, ControlPlaneError) as e:
        log(f"error: {e}")
        sys.exit(1)
