#!/usr/bin/env python3
"""What the disk's syncs alone cost in CPU, at a fixed rate, without the daemon.

    load/synccpu.py DIR [SECONDS [RATE...]]
    load/synccpu.py target/syncfloor 20 1000 500 250

For each RATE (syncs per second, default 1000), writes 4 KiB and
`fdatasync`s it every 1/RATE s, sleeping between, as a group commit that
acks each small batch on its own would at the fleet shape (1,000 devices x
one batch a second). The file is the same as
load/syncfloor.py's: 8 MiB, written whole with zeros and synced first, then
overwritten in a ring, so no sync persists a size or an allocation.

Each rate runs SECONDS (default 20) with the `fdatasync` and SECONDS
without it (the same paced `pwrite`s and sleeps), in alternating halves,
and prints this process's
CPU time per sync (getrusage: the scheduler's own accounting) for both and
their difference: what a sync and its wait cost the thread that issues it,
with Python's own overhead taken out. The completion interrupt, handled on
whichever core it lands, is not in it, so the floor is if anything low;
so is a RATE the disk cannot keep up with (the syncs then leave no time to
sleep, and the pass without them still sleeps): keep RATE well under what
load/syncfloor.py shows the disk doing back to back.
Divide by readings per sync to compare with a daemon's CPU per million
readings: at 10 readings per sync, N us per sync is N/10 s per million.
Removes its file at the end.
"""
import os
import sys
import time

from ring import open_ring, own_cpu, write_next

directory = sys.argv[1]
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
rates = [int(r) for r in sys.argv[3:]] or [1000]
if seconds <= 0 or min(rates) <= 0:
    sys.exit("SECONDS and every RATE must be above zero")


offset = 0
fd, path = open_ring(directory, "synccpu.log")
try:
    for rate in rates:
        cost = {}
        for sync in (True, False, True, False):
            own0 = own_cpu()
            began = time.monotonic()
            due, n = began, 0
            while due < began + seconds / 2:
                offset = write_next(fd, offset)
                if sync:
                    os.fdatasync(fd)
                n += 1
                due += 1.0 / rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            used, count = cost.get(sync, (0.0, 0))
            cost[sync] = (used + own_cpu() - own0, count + n)
        with_sync = cost[True][0] / cost[True][1] * 1e6
        without = cost[False][0] / cost[False][1] * 1e6
        print(
            f"rate {rate}/s: {cost[True][1]} syncs; CPU per 4 KiB write with its "
            f"fdatasync {with_sync:.0f} us, without {without:.0f} us: the sync "
            f"{with_sync - without:.0f} us, {(with_sync - without) * rate / 1e6:.3f} cores"
        )
finally:
    os.close(fd)
    os.remove(path)
