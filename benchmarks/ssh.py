"""The SSH gateway against Docker's own tools on one hub and workspace, in one run.

    python benchmarks/ssh.py [--quick] [--runs N] [--size-mb M]

- Time to first prompt: ``ssh -p PORT bench@127.0.0.1`` in a terminal of its own (a pty),
  from starting ssh to the shell's prompt (``$ ``) on the screen: connect, key exchange, key
  login, the hub asked for the server, Docker for the container, exec, bash's start-up.
  Baseline: ``docker exec -it CONTAINER bash`` to its prompt, the same way.
- A command: ``ssh bench@hub true`` vs ``docker exec CONTAINER true``.
- Copying a file of M MB (200; 50 with --quick) of random bytes: ``scp`` up and down (OpenSSH 9
  speaks sftp: the image's sftp-server through the gateway) vs ``docker cp`` up and down.

Each figure is the median of the runs (interleaved with its baseline). Metric: the median time to
first prompt; target <= 2 s. scp's throughput is reported beside docker cp's (ratio), not judged:
it is bound by the machine's cipher speed and the load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pty
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from machine_info import machine_info

from labgpu.db.ssh_key_store import SshKeyStore
from labgpu.labels import LABEL_USER
from labgpu.ssh.registry import register_key
from tests.harness import HubProcess, free_port, wait_until

TARGET_PROMPT_S = 2.0


def until_prompt(argv: list[str], env: dict[str, str], timeout: float = 60) -> float:
    """Seconds from starting ``argv`` in a new terminal to a shell prompt on it; then exit."""
    master, slave = pty.openpty()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        while b"$ " not in seen:
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"no prompt after {timeout} s: {seen[-300:]!r}")
            if select.select([master], [], [], 0.5)[0]:
                with contextlib.suppress(OSError):
                    seen += os.read(master, 65536)
        elapsed = time.perf_counter() - t0
        os.write(master, b"exit\n")
        proc.wait(30)
        return elapsed
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs, a 50 MB file (under a minute or two)")
    parser.add_argument("--runs", type=int, default=None, help="runs of each measurement (default 10)")
    parser.add_argument("--size-mb", type=int, default=None, help="the copied file's size (default 200)")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 10)
    size_mb = args.size_mb or (50 if args.quick else 200)
    for tool in ("ssh", "scp", "ssh-keygen", "docker"):
        if not shutil.which(tool):
            raise SystemExit(f"benchmarks/ssh.py needs {tool} (apt-get install openssh-client docker.io)")

    tmp = Path(tempfile.mkdtemp(prefix="labgpu-ssh-bench-"))
    key = tmp / "id_bench"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    hub = HubProcess(users=["bench"], extra_env={"LABGPU_SSH": "on", "LABGPU_SSH_PORT": str(port)})
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    ssh = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    ssh += ["-o", "LogLevel=ERROR", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    samples: dict[str, list[float]] = {
        k: []
        for k in ("ssh_prompt", "docker_prompt", "ssh_true", "docker_true", "scp_up", "scp_down", "cp_up", "cp_down")
    }
    try:
        hub.start()
        with SshKeyStore(hub.state_dir / "ledger.sqlite") as store:
            register_key(store, "bench", Path(f"{key}.pub").read_text())
        client = hub.client("bench")
        client.start_server()
        client.wait_ready()
        [container] = hub.containers(**{LABEL_USER: "bench"})

        def listening() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
                return True
            return False

        wait_until(listening, 30, "the SSH gateway")
        login = "bench@127.0.0.1"
        data = tmp / "data.bin"
        with open(data, "wb") as f:
            for _ in range(size_mb):
                f.write(os.urandom(1 << 20))
        back = tmp / "back.bin"
        # warm-up: the first exec and the first read of the image's files pay for the page cache
        until_prompt(["ssh", "-p", str(port), *ssh, "-tt", login], env)
        timed(["docker", "exec", container.id, "true"])
        for i in range(runs):
            samples["ssh_prompt"].append(until_prompt(["ssh", "-p", str(port), *ssh, "-tt", login], env))
            samples["docker_prompt"].append(until_prompt(["docker", "exec", "-it", container.id, "bash"], env))
            samples["ssh_true"].append(timed(["ssh", "-p", str(port), *ssh, login, "true"], env))
            samples["docker_true"].append(timed(["docker", "exec", container.id, "true"]))
            samples["scp_up"].append(timed(["scp", "-P", str(port), *ssh, str(data), f"{login}:bench.bin"], env))
            samples["scp_down"].append(timed(["scp", "-P", str(port), *ssh, f"{login}:bench.bin", str(back)], env))
            if back.stat().st_size != data.stat().st_size:
                raise RuntimeError("scp brought back a file of another size")
            samples["cp_up"].append(timed(["docker", "cp", str(data), f"{container.id}:/home/jovyan/cp.bin"]))
            samples["cp_down"].append(timed(["docker", "cp", f"{container.id}:/home/jovyan/cp.bin", str(back)]))
            print(f"run {i + 1}/{runs}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in samples.items()), flush=True)
    finally:
        hub.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    medians = {k: statistics.median(v) for k, v in samples.items()}
    mb_s = {k: size_mb / medians[k] for k in ("scp_up", "scp_down", "cp_up", "cp_down")}
    prompt = medians["ssh_prompt"]
    passed = prompt <= TARGET_PROMPT_S
    result = {
        "benchmark": "ssh",
        "metric": "median time to first prompt of `ssh -p PORT user@hub` (seconds)",
        "first_prompt_s": round(prompt, 4),
        "target_s": TARGET_PROMPT_S,
        "pass": passed,
        "docker_exec_prompt_s": round(medians["docker_prompt"], 4),
        "command_true_s": {"ssh": round(medians["ssh_true"], 4), "docker exec": round(medians["docker_true"], 4)},
        "copy_mb_per_s": {k: round(v, 1) for k, v in mb_s.items()},
        "scp_vs_docker_cp": {
            "up": round(mb_s["scp_up"] / mb_s["cp_up"], 3),
            "down": round(mb_s["scp_down"] / mb_s["cp_down"], 3),
        },
        "file_mb": size_mb,
        "runs": runs,
        "median_s": {k: round(v, 4) for k, v in medians.items()},
        "samples_s": {k: [round(x, 4) for x in v] for k, v in samples.items()},
        "machine": machine_info(openssh=subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()),
        "load_average_after": os.getloadavg(),
        "quick": args.quick,
    }
    out = REPO / "benchmarks" / "results" / "ssh.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"first prompt: ssh {prompt:.3f} s, docker exec -it {medians['docker_prompt']:.3f} s")
    print(f"`true`: ssh {medians['ssh_true']:.3f} s, docker exec {medians['docker_true']:.3f} s")
    print(
        f"{size_mb} MB: scp up {mb_s['scp_up']:.0f} MB/s down {mb_s['scp_down']:.0f} MB/s; "
        f"docker cp up {mb_s['cp_up']:.0f} MB/s down {mb_s['cp_down']:.0f} MB/s"
    )
    print(f"ssh: first_prompt_s={prompt:.3f} target={TARGET_PROMPT_S} {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
