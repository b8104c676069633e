"""The API's names: group, version, kind, and the annotations users set."""

from __future__ import annotations

GROUP = "stopbudget.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "StopPolicy"
PLURAL = "stoppolicies"
SINGULAR = "stoppolicy"
SHORT_NAMES = ("sp",)

#: Annotation on a StopPolicy that pauses it like ``spec.control.mode: Paused``.
ANNOTATION_PAUSED = f"{GROUP}/paused"
#: Annotation on a StopPolicy that asks for one audit; removed when the audit starts.
ANNOTATION_AUDIT_REQUESTED = f"{GROUP}/audit-requested"
#: Annotation the operator sets on the target's pods after a configMap sink write with
#: ``refreshPods: true``: its value is the ConfigMap's resourceVersion; changing the pod
#: makes kubelet sync it, refreshing the mounted ConfigMap at once.
ANNOTATION_BUDGET_REVISION = f"{GROUP}/budget-revision"
