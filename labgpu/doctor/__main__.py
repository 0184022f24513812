"""``python -m labgpu.doctor``: the same as ``labgpu-doctor``."""

import sys

from labgpu.doctor.checks import main

sys.exit(main())
