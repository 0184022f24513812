"""The spawn page's figures: how many GPUs are free now and, for each GPU count the user may ask
for, where such a request would stand in the GPU queue and how long it would wait. The same
ordering (:meth:`labgpu.hub.gpu_queue.GpuQueue`'s snapshot and fair-share order) and estimate
(:func:`labgpu.fairshare.scheduler.estimate_wait`) as a real queued spawn's progress messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from labgpu.fairshare import scheduler
from labgpu.fairshare.scheduler import GpuRequest
from labgpu.quota import Policy, resolve
from labgpu.units import format_minutes, gpus_text
from labgpu.web.data import Stores

MAX_CHOICES = 8
PROBE = "(this spawn)"


def choice_text(gpus: int, free: int, estimate: scheduler.WaitEstimate | None) -> str:
    if estimate is None or (estimate.position == 1 and gpus <= free):
        return f"{gpus_text(gpus)}: free now, starts at once"
    wait = (
        "wait unknown (the GPUs are held without a time limit)"
        if estimate.estimated_wait is None
        else f"about {format_minutes(max(60.0, estimate.estimated_wait))}"
    )
    return f"{gpus_text(gpus)}: #{estimate.position} in the queue, {wait}"


def spawn_estimates(stores: Stores, policy: Policy | None, user: str, groups: Sequence[str]) -> dict[str, Any]:
    """Free GPUs and, per choice of 1..(the user's per-server GPUs), the queue position and wait."""
    entries = [e for e in stores.queue.waiting() if e.user != user]
    gpu_queue = stores.gpu_queue
    view = gpu_queue.view(entries)
    requests, holdings, free, _, usage = gpu_queue._snapshot(view, entries)
    now = stores.queue.now().timestamp()
    most = resolve(policy, user, groups).gpus if policy is not None else MAX_CHOICES
    choices = []
    for gpus in range(1, min(most, MAX_CHOICES) + 1):
        probe = GpuRequest(PROBE, user, gpus, now, group=view.group(user), max_runtime=view.max_runtime(user))
        ordered = gpu_queue._ordered(view, [*requests, probe], holdings, usage)
        estimate = scheduler.estimate_wait(PROBE, ordered, free, holdings, now)
        starts_now = estimate.position == 1 and gpus <= free
        choices.append(
            {
                "gpus": gpus,
                "starts_now": starts_now,
                "position": None if starts_now else estimate.position,
                "estimated_wait_s": 0.0 if starts_now else estimate.estimated_wait,
                "text": choice_text(gpus, free, estimate),
            }
        )
    return {"free": free, "waiting": len(entries), "choices": choices}
