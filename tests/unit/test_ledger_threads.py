"""The hub's pattern: one Ledger, many spawns at once through asyncio.to_thread."""

import asyncio
import random
from pathlib import Path

from labgpu.db.ledger import Ledger
from labgpu.gpus.allocator import NotEnoughGpus
from labgpu.gpus.inventory import ReplayInventory

DATA = Path(__file__).parent.parent / "data"


async def test_200_concurrent_spawns_in_one_hub_process_share_8_gpus_safely(ledger_db):
    ledger = Ledger(ledger_db)
    ledger.sync_inventory(ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus())
    held_now: dict[str, str] = {}
    answers: list[str] = []

    async def spawn(i: int) -> None:
        rng = random.Random(i)
        user = f"user{i % 50}"
        server = f"s{i}"
        try:
            granted = await asyncio.to_thread(ledger.allocate, user, server, rng.choice([1, 2]))
        except NotEnoughGpus as refused:
            answers.append("refused: " + str(refused))
            return
        for uuid in granted.gpu_uuids:  # what the spawner would hand to Docker
            assert uuid not in held_now, f"{uuid} handed to {user}/{server} while {held_now[uuid]} runs on it"
            held_now[uuid] = f"{user}/{server}"
        answers.append("granted")
        await asyncio.sleep(rng.random() * 0.01)  # the container runs a little
        for uuid in granted.gpu_uuids:
            del held_now[uuid]
        await asyncio.to_thread(ledger.release, user, server, "stopped")

    try:
        await asyncio.wait_for(asyncio.gather(*(spawn(i) for i in range(200))), timeout=120)
        assert len(answers) == 200
        # Nobody is refused before 7 of the 8 GPUs are held, by grants of 1 or 2 GPUs (how many
        # more are granted depends on how releases and allocations interleave in the threads).
        assert answers.count("granted") >= 4
        assert all(a == "granted" or a.startswith("refused: Not enough free GPUs") for a in answers)
        assert ledger.allocations() == []
        grants = [e for e in ledger.audit() if e.action == "grant"]
        assert len(grants) == answers.count("granted")
    finally:
        ledger.close()
