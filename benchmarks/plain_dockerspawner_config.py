"""Baseline for benchmarks/spawn.py: the same hub, proxy, image, network and home volume as
jupyterhub_config.py, but spawned by plain DockerSpawner (what labs hand-roll today)."""

import os
from pathlib import Path

c = get_config()
load_subconfig(str(Path(__file__).resolve().parent.parent / "jupyterhub_config.py"))

hub_id = os.environ.get("LABGPU_HUB_ID", "labgpu")
c.JupyterHub.spawner_class = "docker"
c.DockerSpawner.image = c.GPUDockerSpawner.image
c.DockerSpawner.pull_policy = c.GPUDockerSpawner.pull_policy
c.DockerSpawner.network_name = c.GPUDockerSpawner.network_name
c.DockerSpawner.prefix = hub_id
c.DockerSpawner.remove = True
c.DockerSpawner.volumes = {hub_id + "-home-{username}": "/home/jovyan"}
c.DockerSpawner.extra_create_kwargs = {"labels": {"org.labgpu.hub": hub_id}}
# The same resource limits as the benchmark's quota policy gives GPUDockerSpawner (see
# benchmarks/spawn.py): a CPU limit changes how fast JupyterLab starts, so both get it.
c.DockerSpawner.mem_limit = "4G"
c.DockerSpawner.cpu_limit = 2.0
c.DockerSpawner.extra_host_config = {"shm_size": "2G"}
c.DockerSpawner.default_url = "/lab"
c.DockerSpawner.http_timeout = 120
c.DockerSpawner.start_timeout = 300
