"""Which GPUs a request gets (pure allocator, no Docker, NVML or database)."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labgpu.gpus.allocator import HeldGpu, NotEnoughGpus, choose_gpus, model_allowed
from labgpu.gpus.inventory import Gpu, ReplayInventory

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="module")
def box8() -> list[Gpu]:
    """8x A100: NVLink islands 0-3 and 4-7, PCIe switches {0,1},{2,3},{4,5},{6,7}."""
    return ReplayInventory(DATA / "a100x8-two-nvlink-islands.json").gpus()


def indices(gpus):
    return [g.index for g in gpus]


def without(gpus, *taken):
    return [g for g in gpus if g.index not in taken]


def test_two_gpus_come_from_one_nvlink_island_and_one_pcie_switch(box8):
    assert indices(choose_gpus(box8, 2)) == [0, 1]


def test_four_gpus_never_straddle_the_islands_when_one_island_is_whole(box8):
    free = without(box8, 0)  # island A has 3 free, island B 4
    assert indices(choose_gpus(free, 4)) == [4, 5, 6, 7]


def test_pack_fills_the_busier_island_so_a_whole_island_stays_free(box8):
    free = without(box8, 4)  # island B is partly used
    chosen = choose_gpus(free, 1, placement="pack")
    assert chosen[0].index in (5, 6, 7)
    # and with two taken in B, a pair still lands in B rather than breaking island A
    assert indices(choose_gpus(without(box8, 4, 5), 2, placement="pack")) == [6, 7]


def test_spread_puts_a_single_gpu_on_the_emptiest_island(box8):
    free = without(box8, 0, 1, 2)  # island A has 1 free, island B 4
    assert choose_gpus(free, 1, placement="spread")[0].index in (4, 5, 6, 7)
    assert choose_gpus(free, 1, placement="pack")[0].index == 3


def test_pair_prefers_a_shared_pcie_switch_within_the_island(box8):
    free = without(box8, 0, 3)  # island A: 1 and 2 free on different switches; island B whole
    # pack: best fit is island A (2 free), even though its two GPUs are on different switches
    assert indices(choose_gpus(free, 2, placement="pack")) == [1, 2]
    # spread: island B, and inside it a pair that shares a switch
    assert indices(choose_gpus(free, 2, placement="spread")) in ([4, 5], [6, 7])


def test_across_islands_only_when_no_island_has_room(box8):
    free = without(box8, 0, 1, 4, 5)  # 2 + 2 free
    assert indices(choose_gpus(free, 3)) in ([2, 3, 6], [2, 3, 7], [2, 6, 7], [3, 6, 7])


def test_unhealthy_and_mig_gpus_are_never_granted(box8):
    from dataclasses import replace

    sick = [replace(g, healthy=False, health_reason="GPU is lost") if g.index == 0 else g for g in box8]
    sick = [replace(g, mig_enabled=True) if g.index == 1 else g for g in sick]
    chosen = choose_gpus(sick, 6)
    assert 0 not in indices(chosen) and 1 not in indices(chosen)
    with pytest.raises(NotEnoughGpus) as refused:
        choose_gpus(sick, 7)
    assert "6 are free" in str(refused.value) and "1 unhealthy" in str(refused.value)


def test_allowed_models_filter_by_name():
    gpus = [
        Gpu(uuid=f"GPU-{i}", index=i, model=model, memory_total=1)
        for i, model in enumerate(["NVIDIA A100-SXM4-80GB", "NVIDIA L40S", "NVIDIA A100-PCIE-40GB"])
    ]
    assert indices(choose_gpus(gpus, 2, models=["a100"])) == [0, 2]
    assert indices(choose_gpus(gpus, 1, models=["L40S"])) == [1]
    assert model_allowed("NVIDIA H100 80GB HBM3", None)
    with pytest.raises(NotEnoughGpus) as refused:
        choose_gpus(gpus, 2, models=["L40S"])
    assert str(refused.value).startswith("Not enough free L40S GPUs: you asked for 2, 1 is free")


def test_refusal_says_how_many_are_free_and_who_holds_the_rest(box8):
    since = datetime(2026, 11, 24, 9, 14, tzinfo=UTC)
    now = since + timedelta(hours=1)
    held = [HeldGpu("GPU-3f2a9c1e-5b7d", "alice", "", since)]
    with pytest.raises(NotEnoughGpus) as refused:
        choose_gpus(box8[:1], 2, held=held, now=now)
    local = since.astimezone().strftime("%H:%M")
    assert str(refused.value) == (
        f"Not enough free GPUs: you asked for 2, 1 is free (GPU-3f2a… held by alice since {local})."
    )
    assert refused.value.requested == 2 and refused.value.free == 1


def test_refusal_groups_gpus_by_holder_and_names_named_servers():
    since = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    held = [HeldGpu(f"GPU-aaaa000{i}-x", "bob", "big", since) for i in range(3)]
    with pytest.raises(NotEnoughGpus) as refused:
        choose_gpus([], 1, held=held, now=since + timedelta(days=3))
    message = str(refused.value)
    assert "0 are free" in message
    assert "GPU-aaaa…, GPU-aaaa…, GPU-aaaa… held by bob/big since 2026-11-" in message


def test_request_larger_than_the_hub_says_so():
    gpus = [Gpu(uuid="GPU-1", index=0, model="H100", memory_total=1)]
    with pytest.raises(NotEnoughGpus) as refused:
        choose_gpus(gpus, 4, total=1)
    assert "This hub has only 1 GPU; ask for at most 1." in str(refused.value)


def test_zero_gpus_is_a_valid_request_and_bad_arguments_are_refused(box8):
    assert choose_gpus(box8, 0) == []
    with pytest.raises(ValueError, match="placement must be one of pack, spread"):
        choose_gpus(box8, 1, placement="random")
    with pytest.raises(ValueError, match="0 or more"):
        choose_gpus(box8, -1)


@st.composite
def inventories(draw):
    count = draw(st.integers(1, 24))
    islands = draw(st.integers(1, 4))
    gpus = []
    for i in range(count):
        gpus.append(
            dict(
                uuid=f"GPU-{i:04d}",
                index=i,
                island=draw(st.integers(0, islands - 1)),
                switch=draw(st.sampled_from(["", "sw0", "sw1", "sw2"])),
                numa=draw(st.sampled_from([None, 0, 1])),
                healthy=draw(st.sampled_from([True, True, True, False])),  # mostly healthy
                model=draw(st.sampled_from(["NVIDIA A100", "NVIDIA L40S"])),
            )
        )
    result = []
    for g in gpus:
        peers = frozenset(o["uuid"] for o in gpus if o["island"] == g["island"] and o is not g and g["island"] > 0)
        result.append(
            Gpu(
                uuid=g["uuid"],
                index=g["index"],
                model=g["model"],
                memory_total=1,
                healthy=g["healthy"],
                numa_node=g["numa"],
                switch_group=g["switch"],
                nvlink_peers=peers,
            )
        )
    return result


@settings(max_examples=200, deadline=None)
@given(inventories(), st.integers(0, 26), st.sampled_from(["pack", "spread"]), st.sampled_from([None, ["A100"]]))
def test_grants_exactly_n_distinct_eligible_gpus_or_refuses_with_the_true_count(gpus, n, placement, models):
    eligible = [g for g in gpus if g.healthy and model_allowed(g.model, models)]
    try:
        chosen = choose_gpus(gpus, n, placement=placement, models=models)
    except NotEnoughGpus as refused:
        assert len(eligible) < n
        assert refused.free == len(eligible)
        assert f"you asked for {n}, {len(eligible)}" in str(refused)
        return
    assert len(chosen) == n
    assert len({g.uuid for g in chosen}) == n
    assert all(g in eligible for g in chosen)
    assert indices(chosen) == sorted(indices(chosen))
    # when one NVLink island can hold the whole request, the request stays inside an island
    if n > 1:
        islands = {}
        for g in eligible:
            if g.nvlink_peers:
                islands.setdefault(min(g.nvlink_peers | {g.uuid}), set()).add(g.uuid)
        if any(len(members) >= n for members in islands.values()):
            assert any({g.uuid for g in chosen} <= members for members in islands.values())
