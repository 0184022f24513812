"""GPUs: where the inventory comes from (NVML, a static file, a recorded replay) and its
topology, what the GPUs are doing each tick (telemetry readings, their NVML and replay sources),
and the pure allocator (which GPUs a request gets) and reconciliation with Docker."""
