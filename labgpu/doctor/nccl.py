"""The NCCL part of labgpu-doctor, one process per GPU under torchrun: checks an all-reduce sum
and one DistributedDataParallel step, then times all-reduce at a few message sizes.

Rank 0 writes a JSON report to --out (read by ``labgpu.doctor.measure.check_nccl``). Falls back to the
gloo backend on CPUs so the plumbing can be exercised on a machine without GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

from labgpu.doctor.verdicts import bus_bandwidth


def _parse_sizes(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes-mb needs positive sizes in MiB (got {text!r})")
    return sizes


def time_allreduce(torch: Any, dist: Any, buffer: Any, iters: int, rounds: int, cuda: bool) -> float:
    """Median seconds per all-reduce of ``buffer`` (the slowest rank's time for each round)."""
    for _ in range(3):
        dist.all_reduce(buffer)
    per_round = []
    for _ in range(rounds):
        dist.barrier()
        if cuda:
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(iters):
                dist.all_reduce(buffer)
            end.record()
            end.synchronize()
            seconds = begin.elapsed_time(end) / 1000 / iters
        else:
            import time

            start = time.perf_counter()
            for _ in range(iters):
                dist.all_reduce(buffer)
            seconds = (time.perf_counter() - start) / iters
        slowest = torch.tensor([seconds], dtype=torch.float64, device=buffer.device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        per_round.append(float(slowest.item()))
    return statistics.median(per_round)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labgpu.doctor.nccl", description="labgpu-doctor's NCCL worker; start it with torchrun"
    )
    parser.add_argument("--out", required=True, help="where rank 0 writes its JSON report")
    parser.add_argument("--sizes-mb", type=_parse_sizes, default=[1, 16, 256])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    # Correctness: ranks contribute 1..n, every element must sum to n(n+1)/2.
    probe = torch.full((1 << 20,), float(rank + 1), device=device)
    dist.all_reduce(probe)
    expected = world * (world + 1) / 2
    allreduce_correct = bool(torch.all(probe == expected).item())
    allreduce_got = [float(probe.min().item()), float(probe.max().item())]

    # One DDP step on different data per rank: afterwards every rank must hold the same
    # (averaged) gradient.
    torch.manual_seed(0)
    model = torch.nn.Linear(256, 64).to(device)
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    generator = torch.Generator(device="cpu").manual_seed(1000 + rank)
    inputs = torch.randn(32, 256, generator=generator).to(device)
    ddp(inputs).square().mean().backward()
    grad = model.weight.grad.detach().reshape(-1)
    gathered = [torch.empty_like(grad) for _ in range(world)]
    dist.all_gather(gathered, grad)
    ddp_grads_equal = all(torch.equal(gathered[0], g) for g in gathered[1:])

    sizes = []
    for size_mb in args.sizes_mb:
        nbytes = size_mb * 1024 * 1024
        buffer = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        seconds = time_allreduce(torch, dist, buffer, args.iters, args.rounds, cuda)
        algbw = nbytes / seconds / 1e9
        sizes.append(
            {
                "bytes": nbytes,
                "seconds_median": seconds,
                "algbw_gbps": round(algbw, 2),
                "busbw_gbps": round(bus_bandwidth(algbw, world), 2),
            }
        )
        del buffer

    if rank == 0:
        nccl = None
        if cuda:
            version = torch.cuda.nccl.version()
            nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        report = {
            "world_size": world,
            "backend": dist.get_backend(),
            "nccl": nccl,
            "models": [torch.cuda.get_device_name(i) for i in range(world)] if cuda else [],
            "allreduce_correct": allreduce_correct,
            "allreduce_got": allreduce_got,
            "allreduce_expected": expected,
            "ddp_grads_equal": ddp_grads_equal,
            "iters": args.iters,
            "rounds": args.rounds,
            "sizes": sizes,
        }
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
