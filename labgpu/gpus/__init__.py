"""GPUs: where the inventory comes from (NVML, a static file, a recorded replay) and its
topology, and the pure allocator (which GPUs a request gets) and reconciliation with Docker."""
