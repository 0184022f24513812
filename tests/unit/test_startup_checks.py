"""At hub start, the workspace settings an admin wrote are held to the allowlist: a hub that would
refuse every spawn does not start (issue 12 items 4 and 9)."""

from __future__ import annotations

from traitlets.config import Config

from labgpu.hub.startup_checks import workspace_settings_problems


def test_a_clean_configuration_has_no_problems():
    c = Config()
    c.GPUDockerSpawner.volumes = {"/srv/datasets": {"bind": "/datasets", "mode": "ro"}}
    c.DockerSpawner.extra_host_config = {"ulimits": [{"Name": "memlock", "Soft": -1, "Hard": -1}]}
    c.Spawner.cpu_limit = 2.0
    c.GPUDockerSpawner.network_name = "labgpu"
    assert workspace_settings_problems(c) == []


def test_every_problem_in_any_spawner_section_is_listed_at_start():
    c = Config()
    c.DockerSpawner.extra_host_config = {"network_mode": "host", "runtime": "nvidia"}
    c.GPUDockerSpawner.extra_create_kwargs = {"user": "00"}
    c.GPUDockerSpawner.volumes = {"//var/run/docker.sock": "/var/run/docker.sock"}
    c.DockerSpawner.read_only_volumes = {"/var/lib": "/hostlib"}
    c.DockerSpawner.mounts = [{"type": "bind", "source": "/run", "target": "/hostrun"}]
    c.Spawner.cpu_limit = 1e-6
    assert workspace_settings_problems(c) == [
        "extra_create_kwargs.user '00' is root (uid 0); workspaces run as a non-root user",
        "extra_host_config.network_mode is not allowed: the network is the spawner's network_name; "
        "the host's network would expose the host's services",
        "extra_host_config.runtime is not allowed: another runtime can expose every GPU (nvidia) or leave the sandbox",
        "volumes: '//var/run/docker.sock' is in /var/run, which gives a workspace control of the host",
        "read_only_volumes: '/var/lib' is in /var/lib, which gives a workspace control of the host",
        "mounts[0]: '/run' is in /run, which gives a workspace control of the host",
        "cpu_limit must be at least 0.01 CPUs, Docker's smallest, or 0 for no limit (got 1e-06)",
    ]


def test_the_most_specific_section_wins_as_it_does_for_spawns():
    c = Config()
    c.DockerSpawner.extra_host_config = {"network_mode": "host"}
    c.GPUDockerSpawner.extra_host_config = {"dns": ["10.0.0.2"]}
    assert workspace_settings_problems(c) == []


def test_callables_are_left_to_each_spawn_and_other_settings_are_not_evaluated():
    c = Config()
    c.DockerSpawner.extra_host_config = lambda spawner: {"network_mode": "host"}
    c.DockerSpawner.cpu_limit = lambda spawner: {"alice": 2.0}[spawner.user.name]  # needs a user
    c.Spawner.mem_limit = lambda spawner: spawner.user.name  # not a checked setting
    assert workspace_settings_problems(c) == []
