"""DockerSpawner's own upstream test suite, run against GPUDockerSpawner (see run.py)."""
