"""The operator's Kubernetes API calls, through the official `kubernetes` package.

Children are written with server-side apply through its DynamicClient (discovery finds each kind's path, so there
is no table of plurals here). The client is blocking: every call runs in a worker thread (asyncio.to_thread), so
kopf's event loop, its watches and the liveness endpoint never wait on it.
Credentials: the pod's service account (the client re-reads the rotating token) or $KUBECONFIG / ~/.kube/config.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from orpheus_operator import crd

T = TypeVar("T")
Objects = list[dict[str, Any]]  # a list of API objects (a name of its own: inside Kube, `list` is the method)
REQUEST_TIMEOUT = 30  # seconds, per API call
# A kind the server did not serve (an optional child's CRD not installed) is looked up again after this long:
# each miss makes the client re-read all of discovery, which every reconcile pass would otherwise repeat.
ABSENT_KIND_RECHECK_SECONDS = 60.0


class ApiError(Exception):
    """An API server refusal, with its HTTP status, reason and human message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message

    @classmethod
    def from_exception(cls, e: ApiException) -> ApiError:
        try:
            body = json.loads(e.body or "{}")
        except (TypeError, ValueError):
            body = {}
        return cls(int(e.status or 0), body.get("reason") or e.reason or "", body.get("message") or str(e.body))


def not_served(api_version: str, kind: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server does not serve {kind} in {api_version}")


def new_api_client() -> client.ApiClient:
    """In a pod: the mounted service account; elsewhere: the kubeconfig."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)  # refreshes the projected token before it expires
        return client.ApiClient(cfg)
    return config.new_client_from_config()


class Discovery:
    """Which API resource serves each kind (the DynamicClient's discovery), and which kinds the server does not
    serve. A kind the server does not serve (an optional child whose CRD is not installed: HTTPRoute without the
    Gateway API, ScaledObject without KEDA) is a 404 like a missing object: Kube.get() answers None, delete()
    False, apply() raises ApiError(404). The client re-reads discovery before it gives up; a miss is remembered for
    absent_recheck_seconds, so a CRD installed after the operator started is found within that time."""

    def __init__(self, api: client.ApiClient, absent_recheck_seconds: float) -> None:
        self._api = api
        self._dynamic: DynamicClient | None = None
        # Calls run in worker threads; the client's discovery cache is not thread-safe when it is re-read.
        self._lock = threading.RLock()
        self._absent: dict[tuple[str, str], float] = {}  # (apiVersion, kind) -> when to look again
        self._absent_recheck_seconds = absent_recheck_seconds

    @property
    def dynamic(self) -> DynamicClient:
        with self._lock:
            if self._dynamic is None:  # discovery: a few requests, cached in a file under /tmp
                self._dynamic = DynamicClient(self._api)
            return self._dynamic

    def resource(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        with self._lock:
            if time.monotonic() < self._absent.get(key, 0.0):
                raise not_served(api_version, kind)
            try:
                return self.dynamic.resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError:
                self._absent[key] = time.monotonic() + self._absent_recheck_seconds
                raise not_served(api_version, kind) from None


class Kube:
    def __init__(
        self, api_client: client.ApiClient | None = None, absent_recheck_seconds: float = ABSENT_KIND_RECHECK_SECONDS
    ) -> None:
        self.api = api_client or new_api_client()
        self.api.user_agent = crd.FIELD_MANAGER
        self.discovery = Discovery(self.api, absent_recheck_seconds)

    @property
    def dynamic(self) -> DynamicClient:
        return self.discovery.dynamic

    def close(self) -> None:
        self.api.close()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def run() -> T:
            try:
                return fn(*args, **kwargs)
            except ApiException as e:
                raise ApiError.from_exception(e) from None

        return await asyncio.to_thread(run)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any]:
            res = self.discovery.resource(api_version, kind)
            namespace_ = namespace if res.namespaced else None
            return self.dynamic.get(res, name=name, namespace=namespace_, _request_timeout=REQUEST_TIMEOUT).to_dict()

        try:
            return await self._call(read)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str | None, labels: dict[str, str] | None = None, **kw: Any
    ) -> Objects:
        def read() -> Objects:
            res = self.discovery.resource(api_version, kind)
            selector = ",".join(f"{k}={v}" for k, v in (labels or {}).items()) or None
            result = self.dynamic.get(
                res, namespace=namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT, **kw
            )
            return result.to_dict().get("items") or []

        return await self._call(read)

    async def apply(self, obj: dict[str, Any], manager: str = crd.FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply: the fields in `obj` become `manager`'s; fields it no longer sends are removed."""

        def write() -> dict[str, Any]:
            res = self.discovery.resource(obj["apiVersion"], obj["kind"])
            return self.dynamic.server_side_apply(
                res,
                body=obj,
                namespace=obj["metadata"].get("namespace"),
                field_manager=manager,
                force_conflicts=True,
                _request_timeout=REQUEST_TIMEOUT,
            ).to_dict()

        return await self._call(write)

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        def write() -> dict[str, Any]:
            res = self.discovery.resource(obj["apiVersion"], obj["kind"])
            return self.dynamic.create(
                res,
                body=obj,
                namespace=obj["metadata"]["namespace"],
                field_manager=crd.FIELD_MANAGER,
                _request_timeout=REQUEST_TIMEOUT,
            ).to_dict()

        return await self._call(write)

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A whole-object update (PUT); obj carries the resourceVersion it replaces."""

        def write() -> dict[str, Any]:
            res = self.discovery.resource(obj["apiVersion"], obj["kind"])
            return self.dynamic.replace(
                res,
                body=obj,
                namespace=obj["metadata"].get("namespace"),
                field_manager=crd.FIELD_MANAGER,
                _request_timeout=REQUEST_TIMEOUT,
            ).to_dict()

        return await self._call(write)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        def write() -> None:
            res = self.discovery.resource(api_version, kind)
            self.dynamic.delete(
                res,
                name=name,
                namespace=namespace,
                body={"propagationPolicy": "Background"},
                _request_timeout=REQUEST_TIMEOUT,
            )

        try:
            await self._call(write)
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        body: Any,
        content_type: str = "application/merge-patch+json",
        subresource: str | None = None,
    ) -> dict[str, Any]:
        def write() -> dict[str, Any]:
            res = self.discovery.resource(api_version, kind)
            if subresource:
                res = res.subresources[subresource]
            return self.dynamic.patch(
                res,
                body=body,
                name=name,
                namespace=namespace,
                content_type=content_type,
                _request_timeout=REQUEST_TIMEOUT,
            ).to_dict()

        return await self._call(write)

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        return await self.patch(api_version, kind, namespace, name, {"status": status}, subresource="status")

    async def events_for(self, namespace: str, uid: str) -> Objects:
        """The core/v1 Events about one object (e.g. a Job's FailedCreate), oldest first."""
        return await self.list("v1", "Event", namespace, field_selector=f"involvedObject.uid={uid}")

    async def log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        core = client.CoreV1Api(self.api)
        read = functools.partial(
            core.read_namespaced_pod_log,
            pod,
            namespace,
            container=container,
            tail_lines=lines,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return await self._call(read)
