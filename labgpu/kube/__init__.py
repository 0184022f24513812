"""LabGPU Hub on Kubernetes: the same quotas, GPU ledger, fair-share queue and reclaim as on one
Docker server, with each workspace a pod.

- :mod:`labgpu.kube.objects` (pure): a workspace's pod, its home and group claims, and the
  ResourceClaim naming exactly its GPUs, as plain manifests (dicts), like kubespawner's
  ``objects.py``.
- :mod:`labgpu.kube.placement` (pure): which node holds which GPU (from the DRA driver's
  ResourceSlices, or the admin's map in device-plugin mode), and which pod a GPU process
  belongs to (from its cgroup).
- :mod:`labgpu.kube.spawner`: ``GPUKubeSpawner``, KubeSpawner with
  :class:`labgpu.hub.gpu_spawn.GpuSpawnPolicy` (the policy shared with the Docker spawner)
  and the Kubernetes API calls.
- :mod:`labgpu.kube.startup`: the hub's start-up on a cluster (policy, the cluster's GPUs into
  the ledger, reconcile with the workspace pods), run from Zero-to-JupyterHub's extraConfig.
- :mod:`labgpu.kube.attribution`: the poller DaemonSet's process -> pod -> user lookup
  (``labgpu poller --labels kube``); :mod:`labgpu.kube.api`: the few synchronous API calls.
"""
