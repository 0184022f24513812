"""Print the versions inside this image as name=value lines (they become image labels)."""

import contextlib
import platform
from importlib.metadata import PackageNotFoundError, version

import torch

print(f"python={platform.python_version()}")
print(f"torch={torch.__version__}")
print(f"cuda={torch.version.cuda or 'none'}")
print(f"cudnn={torch.backends.cudnn.version() or 'none'}")
try:
    print("nccl=" + ".".join(map(str, torch.cuda.nccl.version())))
except Exception:  # a CPU-only torch has no NCCL
    print("nccl=none")
for dist in ("torchvision", "numpy", "pandas", "matplotlib", "tensorboard", "jupyterlab", "jupyterhub"):
    with contextlib.suppress(PackageNotFoundError):
        print(f"{dist}={version(dist)}")
