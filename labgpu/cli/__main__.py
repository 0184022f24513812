"""``python -m labgpu.cli``: the same as the ``labgpu`` command."""

import sys

from labgpu.cli.main import main

sys.exit(main())
