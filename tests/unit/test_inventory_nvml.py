"""The NVML inventory source: identity, topology and health read from the driver, one GPU's
failure kept to that GPU. Driven by a stand-in for pynvml on this GPU-less machine."""

from types import SimpleNamespace

import pynvml
import pytest

from labgpu.gpus.inventory import InventoryError
from labgpu.gpus.nvml import NvmlInventory


def test_nvml_without_a_driver_is_a_clear_error_not_a_traceback():
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - only on a GPU machine
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver; benchmarks/gpu_inventory_check.py covers it")
    with pytest.raises(InventoryError) as error:
        NvmlInventory().gpus()
    assert "NVML is not available on this host" in str(error.value)
    assert "--source static:FILE" in str(error.value)


class TwoGpuNvml:
    """Stand-in for pynvml on this GPU-less machine: two GPUs on one PCIe switch, NVLinked,
    where GPU 1 falls off the bus after start-up. Raises pynvml's real exception classes.
    (The real driver is exercised by benchmarks/gpu_inventory_check.py on a GPU machine.)"""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_NotFound = pynvml.NVMLError_NotFound
    NVML_TOPOLOGY_MULTIPLE = pynvml.NVML_TOPOLOGY_MULTIPLE
    NVML_NVLINK_MAX_LINKS = 4
    NVML_NVLINK_DEVICE_TYPE_SWITCH = pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH

    def __init__(self):
        self.lost = False
        self.handle_lookups = 0
        self.bus = {0: b"00000000:17:00.0", 1: b"00000000:18:00.0"}

    def nvmlInit(self): ...
    def nvmlShutdown(self): ...
    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        self.handle_lookups += 1
        return i

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}111-aaaa" if isinstance(h, int) else h

    def nvmlDeviceGetName(self, h):
        return "NVIDIA A100-SXM4-40GB"

    def nvmlDeviceGetMemoryInfo(self, h):
        if self.lost and h == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return SimpleNamespace(total=40 * 1024**3)

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=self.bus[h])

    def nvmlDeviceGetNumaNodeId(self, h):
        return 0

    def nvmlDeviceGetTopologyCommonAncestor(self, a, b):
        return pynvml.NVML_TOPOLOGY_SINGLE

    def nvmlDeviceGetNvLinkState(self, h, link):
        if link >= 2:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return 1

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h, link):
        return pynvml.NVML_NVLINK_DEVICE_TYPE_GPU

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h, link):
        return SimpleNamespace(busId=b"0000:" + self.bus[1 - h][9:])

    def nvmlDeviceGetMigMode(self, h):
        if h == 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [0, 0]


def test_nvml_reads_identity_topology_and_marks_only_the_failing_gpu_unhealthy():
    nvml = TwoGpuNvml()
    inventory = NvmlInventory(nvml)
    a, b = inventory.gpus()
    assert (a.uuid, a.model, a.memory_total, a.pci_bus_id) == (
        "GPU-0111-aaaa",
        "NVIDIA A100-SXM4-40GB",
        40 * 1024**3,
        "00000000:17:00.0",
    )
    assert a.switch_group == b.switch_group != "" and a.nvlink_peers == {b.uuid} and b.nvlink_peers == {a.uuid}
    assert a.healthy and b.healthy and not a.mig_enabled
    nvml.lost = True
    a, b = inventory.gpus()
    assert a.healthy and not b.healthy and b.health_reason == "NVML: GPU is lost"
    assert b.uuid == "GPU-1111-aaaa"  # still tracked by UUID, so its holder is still known
    assert nvml.handle_lookups == 2  # handles are cached, not fetched on every call
