"""A real, throwaway Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager.

Everything listens on loopback with free ports and lives in one temporary directory that `stop()` removes.
- TLS: a test CA (openssl) signs the apiserver's serving certificate and two client certificates: the admin
  (group system:masters) and kube-controller-manager (its bootstrap RBAC identity).
- Authorization is RBAC, so a ServiceAccount token (minted with the TokenRequest API) only gets what its
  Roles grant: operator and chart tests use that to prove the chart's RBAC is enough and no more.
- kube-controller-manager runs only the garbagecollector and namespace controllers, so ownerReference
  cascades and namespace deletion really happen. There is no kubelet, scheduler, Job or Deployment
  controller: tests drive Job and Deployment status themselves.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


class ControlPlaneError(RuntimeError):
    pass


def build_binaries() -> Path:
    """Runs build.sh (a no-op when cached) and returns the directory holding the binaries."""
    proc = subprocess.run(["bash", str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"tests/k8s/build.sh failed with exit code {proc.returncode} (see its stderr above)")
    return Path(proc.stdout.strip().splitlines()[-1])


def die_with_parent() -> None:
    """Runs in the child before exec: if the test process dies without tearing down (SIGKILL, crash), the kernel
    kills the child, so no etcd or apiserver outlives its test session (nothing of theirs is worth keeping)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Sends `sig` to a still-running process, waits up to `timeout` seconds, then kills it."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


OPENSSL_REQ = ["req", "-config", "openssl.cnf", "-x509", "-days", "2", "-nodes", "-newkey", "ec"]
OPENSSL_REQ += ["-pkeyopt", "ec_paramgen_curve:prime256v1"]


def make_ca(d: Path) -> None:
    """A test CA (ca.crt, ca.key) in d, and the empty openssl config issue_cert uses."""
    # An empty config, so that only the extensions named here end up in the certificates (the system openssl.cnf
    # would make every certificate a CA).
    (d / "openssl.cnf").write_text("[req]\ndistinguished_name = dn\n[dn]\n")
    ca_ext = ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign", "subjectKeyIdentifier=hash"]
    openssl(*OPENSSL_REQ, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=orpheus-test-ca", *addext(ca_ext), cwd=d)


def addext(extensions: list[str]) -> list[str]:
    return [a for e in extensions for a in ("-addext", e)]


def issue_cert(d: Path, name: str, subject: str, usage: str, san: str | None = None) -> None:
    """NAME.crt and NAME.key in d, signed by d's CA. usage: serverAuth and/or clientAuth; san: subjectAltName=..."""
    ext = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    ext += [san] if san else []
    args = ["-CA", "ca.crt", "-CAkey", "ca.key", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", subject]
    openssl(*OPENSSL_REQ, *args, *addext(ext), cwd=d)


def make_service_account_key(d: Path) -> None:
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=d)
    openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def make_pki(d: Path) -> None:
    """CA, apiserver serving cert, admin and controller-manager client certs, service-account signing key."""
    make_ca(d)
    san = "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc"
    issue_cert(d, "apiserver", "/CN=kube-apiserver", "serverAuth", san)
    issue_cert(d, "admin", "/O=system:masters/CN=orpheus-test-admin", "clientAuth")
    issue_cert(d, "controller-manager", "/CN=system:kube-controller-manager", "clientAuth")
    make_service_account_key(d)


def kubeconfig(server: str, ca_file: Path, user: dict, context: str = "test") -> dict:
    """A one-cluster, one-user kubeconfig document."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": context, "user": user}],
        "contexts": [{"name": context, "context": {"cluster": "test", "user": context}}],
        "current-context": context,
    }


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


@dataclasses.dataclass
class ControlPlane:
    bin_dir: Path
    workdir: Path = dataclasses.field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="orpheus-kube-")))
    processes: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)
    server: str = ""
    # kube-controller-manager's controllers. The default runs no Job, Deployment or ReplicaSet controller, so tests
    # drive those objects' status; add "job,deployment,replicaset" to have pods really created (and admitted).
    controllers: str = "garbagecollector,namespace,serviceaccount"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def helm_binary(self) -> Path:
        return self.bin_dir / "helm"

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> ControlPlane:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self.pki.mkdir(parents=True)
        make_pki(self.pki)
        etcd_url = self._start_etcd()
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/24",
                # The `kubernetes` Service endpoints may not point at loopback; nothing here needs them.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        write_yaml(
            self.admin_kubeconfig,
            kubeconfig(
                self.server,
                self.ca_file,
                {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")},
            ),
        )
        self._wait_ready(timeout)
        kcm_config = write_yaml(
            self.workdir / "controller-manager.kubeconfig",
            kubeconfig(
                self.server,
                self.ca_file,
                {
                    "client-certificate": str(pki / "controller-manager.crt"),
                    "client-key": str(pki / "controller-manager.key"),
                },
            ),
        )
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kcm_config}",
                # garbagecollector and namespace: cascades and namespace deletion really happen; serviceaccount: every
                # namespace gets its "default" ServiceAccount, which admission requires of pods that name none.
                f"--controllers={self.controllers}",
                # Each controller gets its own ServiceAccount and bootstrap Role, as in a kubeadm cluster.
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            ],
        )

    def _start_etcd(self) -> str:
        client, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        self._spawn(
            "etcd",
            [
                "--name=test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=test={peer_url}",
                # Test data is throwaway: skip fsync, which dominates etcd latency on a shared CI disk.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        return client_url

    def _spawn(self, name: str, args: list[str]) -> None:
        with open(self.workdir / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def _wait_ready(self, timeout: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise ControlPlaneError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError as e:
                last = str(e)
            time.sleep(0.5)
        raise ControlPlaneError(
            f"kube-apiserver not ready after {timeout}s ({last}):\n{self.log_tail('kube-apiserver')}"
        )

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        # Reverse start order: controller-manager, apiserver, then etcd.
        for proc in reversed(list(self.processes.values())):
            stop_process(proc, timeout=15)
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- clients --------------------------------------------------------------------------------------------

    def api_client(self, kubeconfig_path: Path | str | None = None):
        """A kubernetes.client.ApiClient for the admin (or for the given kubeconfig)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig_path or self.admin_kubeconfig))

    def service_account_kubeconfig(self, namespace: str, name: str, expiration_seconds: int = 3600) -> Path:
        """Mints a token for the ServiceAccount (TokenRequest API) and writes a kubeconfig that uses it."""
        from kubernetes import client

        with self.api_client() as api:
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
            )
            token = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
        path = self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        doc = kubeconfig(self.server, self.ca_file, {"token": token.status.token}, context=f"{namespace}-{name}")
        doc["contexts"][0]["context"]["namespace"] = namespace
        return write_yaml(path, doc)

    def helm(
        self, *args: str, check: bool = True, kubeconfig_path: Path | str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Runs helm against this control plane (admin credentials unless kubeconfig_path is given)."""
        return run_helm(
            self.helm_binary,
            args,
            home=self.workdir / "helm",
            check=check,
            timeout=timeout,
            kubeconfig=kubeconfig_path or self.admin_kubeconfig,
        )


def run_helm(
    binary: Path,
    args: tuple[str, ...] | list[str],
    *,
    home: Path,
    kubeconfig: Path | str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """Runs helm with its cache, config and data under `home` (never the user's ~/.config/helm)."""
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    env.pop("KUBECONFIG", None)
    if kubeconfig:
        env["KUBECONFIG"] = str(kubeconfig)
    proc = subprocess.run([str(binary), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ControlPlaneError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
