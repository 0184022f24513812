"""Fair sharing: the pure scheduler (usage decay, priority, queue order, backfill, reclaim
decisions, wait estimates) and the virtual-clock simulator that replays traces through it."""
