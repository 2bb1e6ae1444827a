"""Names shared by the CRD, the children the operator renders, and the handlers.

The CRD itself (schema, defaults, validation) is charts/orpheus-tts-operator/crds/orpheustts.yaml.
"""

from __future__ import annotations

GROUP = "tts.orpheus.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "OrpheusTTS"
PLURAL = "orpheusttses"

FIELD_MANAGER = "orpheus-operator"
# Field manager that keeps spec.replicas at its running value when the operator stops managing it (autoscaling).
HANDOVER_MANAGER = "orpheus-operator-handover"
# Put on every resource by operator versions up to 0.1.0 (for a kopf timer); no cleanup needs it, so it is removed.
LEGACY_FINALIZER = f"{GROUP}/operator"

# Labels on every child; the selector labels never change (a Deployment's selector is immutable).
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "orpheus-operator"
HASH_LABEL = f"{GROUP}/engine-hash"
ATTEMPT_LABEL = f"{GROUP}/build-attempt"
# The build-relevant spec an engine was built from, on its Job and on the Deployment serving it:
# a Deployment keeps serving its engine (and its limits) while a new one builds.
BUILD_SPEC_ANNOTATION = f"{GROUP}/build-spec"
# On the Deployment while autoscaling is on, and after it until runtime.replicas changes: runtime.replicas as it
# was when autoscaling started ("" when unset).
REPLICAS_AT_AUTOSCALING_ANNOTATION = f"{GROUP}/replicas-at-autoscaling"

SERVER = "server"
ENGINE_BUILD = "engine-build"
ENGINE_STORAGE = "engine-storage"
ENGINE_STORE = "engine-store"

ENGINES_MOUNT = "/engines"
HTTP_PORT = 8000
ACTIVE_STREAMS_METRIC = "orpheus_active_streams"


def pvc_name(name: str) -> str:
    return f"{name}-engines"


def store_name(name: str) -> str:
    return f"{name}-engines"  # the Deployment and Service of the engine store (a PVC of the same name)


def job_name(name: str, engine_hash: str, attempt: int) -> str:
    # name <= 40 (CRD rule) + 7 + 10 + 1 + 2 digits stays within the 63 characters of a label value.
    return f"{name}-build-{engine_hash}-{attempt}"


def labels(name: str, component: str) -> dict[str, str]:
    return {
        NAME_LABEL: "orpheus-tts",
        INSTANCE_LABEL: name,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGED_BY,
    }
