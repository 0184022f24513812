"""What runs beside the hub as its managed services: the telemetry poller and the idle-GPU
reclaimer."""
