"""``python -m labgpu.doctor``: the same as ``labgpu-doctor``."""

import sys

from labgpu.doctor.cli import main

sys.exit(main())
