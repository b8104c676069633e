"""A ConfigMap volume written the way kubelet writes it, for the gate's tests.

The code lives in :mod:`stopbudget.devkit.kubelet`, which ``stopbudget demo
--engine llamacpp`` uses too; the tests import it from here.
"""

from __future__ import annotations

from stopbudget.devkit.kubelet import ConfigMapMirror, ConfigMapVolume

__all__ = ["ConfigMapMirror", "ConfigMapVolume"]
