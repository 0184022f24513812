"""The SSH gateway: ``ssh -p 2222 alice@hub`` lands in alice's running workspace.

One process beside the hub (``labgpu ssh-gateway``, a JupyterHub managed service) speaks SSH
with asyncssh and runs every session inside the user's workspace container through Docker
exec, as the workspace user with the container's environment: a shell with a PTY, a command
with its exit status, the image's ``sftp-server`` for sftp and scp, and ``direct-tcpip``
forwards relayed from inside the workspace (so only its own ports are reachable).

- :mod:`labgpu.ssh.keys`: OpenSSH public key lines, checked, with their SHA256 fingerprints (pure)
- :mod:`labgpu.ssh.access`: login names, forward targets, the failed-login limiter, messages (pure)
- :mod:`labgpu.ssh.hub_api`: who a token belongs to, a user's servers (the Hub REST API)
- :mod:`labgpu.ssh.docker_exec`: a workspace's container, and exec streams on it (Docker)
- :mod:`labgpu.ssh.gateway`: the asyncssh server, its sessions and forwards, the audit log

Importing this package imports no asyncssh or Docker: the hub's web pages use the pure modules.
"""
