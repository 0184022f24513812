"""LabGPU Hub: JupyterHub GPU workspaces for research labs."""

__version__ = "0.1.0"
