"""A small asyncio client for the few Kubernetes API calls the operator makes (aiohttp, which kopf brings).

The operator image carries no Kubernetes client library: credentials come from kopf's own login
functions (service account in a pod, kubeconfig outside), the same ones kopf's watches use.
Children are written with server-side apply, so reconciling an unchanged object is a no-op.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

from orpheus_operator import crd

logger = logging.getLogger(__name__)

PLURALS = {
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Pod": "pods",
    "Service": "services",
    "Job": "jobs",
    "Deployment": "deployments",
    "Ingress": "ingresses",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
    # issue #12
    "HTTPRoute": "httproutes",
    "NetworkPolicy": "networkpolicies",
    "ScaledObject": "scaledobjects",
    crd.KIND: crd.PLURAL,
}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


def resource_path(
    api_version: str, kind: str, namespace: str, name: str | None = None, subresource: str | None = None
) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{quote(namespace)}/{PLURALS[kind]}"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


def object_path(obj: dict[str, Any], subresource: str | None = None) -> str:
    meta = obj["metadata"]
    return resource_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"], subresource)


def login(settings: kopf.OperatorSettings | None = None) -> kopf.ConnectionInfo:
    """In a pod: the mounted service account token; elsewhere: $KUBECONFIG or ~/.kube/config."""
    settings = settings or kopf.OperatorSettings()
    conn = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if conn is None:
        raise kopf.LoginError("no service account token and no kubeconfig: cannot reach the Kubernetes API")
    return conn


class KubeApi:
    def __init__(self, login_fn: Callable[[], kopf.ConnectionInfo] = login) -> None:
        self._login = login_fn
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    def _open(self) -> aiohttp.ClientSession:
        conn = self._login()
        self._server = conn.server.rstrip("/")
        headers = {**conn.as_http_headers(), "User-Agent": crd.FIELD_MANAGER}
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=conn.as_ssl_context()),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        data = json.dumps(body) if body is not None else None
        for attempt in (1, 2):
            if self._session is None:
                self._session = self._open()
            async with self._session.request(
                method, self._server + path, data=data, params=params, headers={"Content-Type": content_type}
            ) as resp:
                text = await resp.text()
                if resp.status == 401 and attempt == 1:
                    # Service account tokens rotate: log in again (re-reading the token) once.
                    await self.close()
                    continue
                if resp.status >= 400:
                    try:
                        status = json.loads(text)
                    except ValueError:
                        status = {}
                    raise ApiError(resp.status, status.get("reason", resp.reason or ""), status.get("message", text))
                return json.loads(text) if text else {}
        raise AssertionError("unreachable")

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list(self, api_version: str, kind: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        result = await self.request(
            "GET", resource_path(api_version, kind, namespace), params={"labelSelector": selector}
        )
        return result.get("items") or []

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: the fields in `obj` become the operator's; fields it no longer sends are removed."""
        return await self.request(
            "PATCH",
            object_path(obj),
            body=obj,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": crd.FIELD_MANAGER, "force": "true"},
        )

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return await self.request(
            "POST",
            resource_path(obj["apiVersion"], obj["kind"], meta["namespace"]),
            body=obj,
            params={"fieldManager": crd.FIELD_MANAGER},
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        try:
            await self.request(
                "DELETE", resource_path(api_version, kind, namespace, name), body={"propagationPolicy": "Background"}
            )
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH",
            resource_path(api_version, kind, namespace, name, "status"),
            body={"status": status},
            content_type="application/merge-patch+json",
        )
