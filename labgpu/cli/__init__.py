"""`labgpu ...`, the administrators' command line: :mod:`labgpu.cli.main` builds the parser and
each subcommand (``quotas``, ``gpus``, ``poller``, ``reclaim``, ``usage``, ``simulate``) lives in
its own module here, which parses, calls the package that owns the concern, and prints."""
