"""What runs inside the JupyterHub process: the spawner, the pure container builder, the
workspace network, the hub's start-up (policy, ledger, inventory, reconcile) and the GPU queue."""
