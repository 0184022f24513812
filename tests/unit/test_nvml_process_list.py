"""The one-call process list (issue 21): nvidia-ml-py's real structures and constants, and a
stand-in for the C function that behaves as NVML documents (INSUFFICIENT_SIZE with the count
needed when the buffer is short). The real call is checked on a GPU by
benchmarks/gpu_poller_check.py, which compares it with nvidia-ml-py's own wrapper."""

from __future__ import annotations

import ctypes

import pynvml
import pytest

from labgpu.gpus.sampling import MAX_PROCESSES_PER_GPU, _ProcessList, process_list_reader

MIB = 1024 * 1024


class FakeNvml:
    """pynvml itself, but the process-list function pointer is ours."""

    def __init__(self, processes, result=None):
        self.processes, self.result, self.calls = processes, result, 0

    def __getattr__(self, name):
        return getattr(pynvml, name)

    def _nvmlGetFunctionPointer(self, name):
        assert name == "nvmlDeviceGetComputeRunningProcesses_v3"

        def call(handle, count_ref, buffer):
            self.calls += 1
            if self.result is not None:
                return self.result
            count = count_ref._obj
            if count.value < len(self.processes):
                count.value = len(self.processes)
                return pynvml.NVML_ERROR_INSUFFICIENT_SIZE
            for i, (pid, used) in enumerate(self.processes):
                buffer[i].pid, buffer[i].usedGpuMemory = pid, used
            count.value = len(self.processes)
            return pynvml.NVML_SUCCESS

        return call


def test_one_call_per_tick_and_the_same_answer_as_the_wrapper_would_give():
    na = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
    nvml = FakeNvml([(4242, 3 * 1024 * MIB), (4343, na)])
    read = process_list_reader(nvml)
    assert isinstance(read, _ProcessList)
    assert read(ctypes.c_void_p()) == {4242: 3072, 4343: None}
    assert read(ctypes.c_void_p()) == {4242: 3072, 4343: None} and nvml.calls == 2
    nvml.processes = []
    assert read(ctypes.c_void_p()) == {}


def test_a_short_buffer_grows_and_the_call_is_repeated():
    nvml = FakeNvml([(1000 + i, MIB) for i in range(100)])
    read = _ProcessList(nvml, capacity=4)
    assert len(read(None)) == 100 and nvml.calls == 2
    assert len(read(None)) == 100 and nvml.calls == 3  # the grown buffer is kept


def test_errors_are_nvml_errors_so_a_lost_gpu_is_still_a_lost_gpu():
    read = _ProcessList(FakeNvml([], result=pynvml.NVML_ERROR_GPU_IS_LOST))
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        read(None)
    too_many = FakeNvml([(i, MIB) for i in range(MAX_PROCESSES_PER_GPU + 1)])
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        _ProcessList(too_many, capacity=MAX_PROCESSES_PER_GPU)(None)


def test_without_the_v3_function_the_public_wrapper_is_used():
    class Old:
        def nvmlDeviceGetComputeRunningProcesses(self, handle):
            return [type("P", (), {"pid": 7, "usedGpuMemory": 2 * MIB})()]

    assert process_list_reader(Old())(None) == {7: 2}
