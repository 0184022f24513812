# The hub image for Zero-to-JupyterHub: the chart's own hub image plus LabGPU (GPUKubeSpawner,
# the reclaimer, the poller). From the repository root:
#   docker build -f deploy/kubernetes/hub.Dockerfile -t registry.example.org/lab/labgpu-hub:0.1.0 .
# LabGPU needs JupyterHub 6.1 or later: use the k8s-hub image of a chart release that ships it
# (check with `docker run --rm IMAGE jupyterhub --version`), and that chart for values.yaml.
ARG K8S_HUB_IMAGE=quay.io/jupyterhub/k8s-hub:latest
FROM ${K8S_HUB_IMAGE}
USER root
COPY pyproject.toml README.md /tmp/labgpu/
COPY labgpu /tmp/labgpu/labgpu
RUN pip install --no-cache-dir /tmp/labgpu && rm -rf /tmp/labgpu
USER ${NB_USER:-jovyan}
