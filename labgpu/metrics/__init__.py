"""Prometheus metrics of the hub: dcgm-exporter's per-GPU series with who holds each GPU, and
LabGPU's own (the queue, grants and refusals, reclaims, GPU-hours per user and group, fair
share, the poller's health, reconcile drift), read from the ledger's database at each scrape.

- :mod:`labgpu.metrics.series`: a plain snapshot -> metric families (pure);
- :mod:`labgpu.metrics.accounting`: the counters, grown from what was recorded since the
  previous scrape (pure);
- :mod:`labgpu.metrics.collector`: the collector that reads the database (I/O);
- :mod:`labgpu.metrics.web`: ``/services/labgpu/metrics`` in the hub's web service, for a token
  with the ``custom:labgpu:metrics`` scope.

deploy/prometheus/ scrapes it with alert rules; deploy/grafana/ has a dashboard.
"""
