"""Which workspace processes keep simulated GPUs busy: the poller's view of the demo's and the
tests' load, read from the real /proc of the real containers.

A process started with ``LABGPU_SIM_BUSY=1`` in its environment (``LABGPU_SIM_BUSY=1 python
train.py`` in a JupyterLab terminal) marks the GPUs of its workspace busy while it runs. Its
container is found through /proc/PID/cgroup and the container's ``org.labgpu.gpus`` label, as
the poller attributes real GPU processes. Only for simulated GPUs: the hub refuses them in
production mode.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from labgpu.gpus.simulated import BUSY_ENV
from labgpu.labels import LABEL_GPUS, parse_gpus
from labgpu.services.attribution import LabelLookup, container_id_from_cgroup

log = logging.getLogger(__name__)

_MARKER = f"{BUSY_ENV}=1".encode()


class MarkedProcessScanner:
    """Scans /proc once per call: ``{gpu_uuid: [pid, ...]}`` for every marked process in a
    container that holds GPUs. Container labels are cached (they never change)."""

    def __init__(self, label_lookup: LabelLookup, proc_root: str | os.PathLike[str] = "/proc") -> None:
        self.label_lookup = label_lookup
        self.proc_root = Path(proc_root)
        self._gpus_of: dict[str, tuple[str, ...]] = {}

    def __call__(self) -> Mapping[str, list[int]]:
        busy: dict[str, list[int]] = {}
        try:
            entries = [e for e in os.scandir(self.proc_root) if e.name.isdigit()]
        except OSError as error:
            log.warning("Cannot list %s: %s", self.proc_root, error)
            return busy
        for entry in entries:
            gpus = self._gpus_of_process(entry.name)
            if gpus and self._marked(entry.name):
                for uuid in gpus:
                    busy.setdefault(uuid, []).append(int(entry.name))
        return busy

    def _gpus_of_process(self, pid: str) -> tuple[str, ...]:
        try:
            container_id = container_id_from_cgroup((self.proc_root / pid / "cgroup").read_text())
        except OSError:
            return ()
        if container_id is None:
            return ()
        if container_id not in self._gpus_of:
            try:
                labels = self.label_lookup(container_id)
            except Exception as error:  # Docker down: ask again next tick
                log.debug("labels of %s: %s", container_id[:12], error)
                return ()
            self._gpus_of[container_id] = parse_gpus((labels or {}).get(LABEL_GPUS))
        return self._gpus_of[container_id]

    def _marked(self, pid: str) -> bool:
        try:
            environ = (self.proc_root / pid / "environ").read_bytes()
        except OSError:
            return False
        return _MARKER in environ.split(b"\0")
