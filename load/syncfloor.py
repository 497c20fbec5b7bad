#!/usr/bin/env python3
"""The disk's own floor under a power-loss-safe ack, without the daemon.

    load/syncfloor.py DIR [SECONDS [RATE...]]
    load/syncfloor.py target/syncfloor 20 2000 10000

Writes 4 KiB and `fdatasync`s it, back to back, for SECONDS (default 20),
as a group commit with nothing else to do would: in a file under DIR of
8 MiB, written whole with zeros and synced first and then overwritten in a
ring, so that no sync has a file size or block allocation to persist (as
the daemon's write-ahead log, which also rewrites its two mark sectors
before each sync: this floor is, if anything, a little optimistic). Then,
for readings arriving evenly at each RATE per second (default 2000 and
10000: goal 3's and goal 2's batches), each is taken to be acked when the
first sync that starts after it arrives has returned. Prints p50/p99/p999
and the longest of that ack latency, and how many syncs took over 10 ms:
no daemon that acks only after `fdatasync` can do better on this disk.
Removes its file at the end.
"""
import bisect
import os
import sys
import time

from ring import open_ring, write_next

directory = sys.argv[1]
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
rates = [int(r) for r in sys.argv[3:]] or [2000, 10000]
starts, ends = [], []
offset = 0
fd, path = open_ring(directory, "syncfloor.log")
try:
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        began = time.monotonic()
        offset = write_next(fd, offset)
        os.fdatasync(fd)
        starts.append(began)
        ends.append(time.monotonic())
finally:
    os.close(fd)
    os.remove(path)

if len(starts) < 2:
    sys.exit("too short a run: no syncs to measure")
slow = sum(1 for s, e in zip(starts, ends) if e - s > 0.010)
for rate in rates:
    latencies = []
    arrival = starts[0]
    while arrival < starts[-1]:
        first = bisect.bisect_left(starts, arrival)
        latencies.append(ends[first] - arrival)
        arrival += 1.0 / rate
    latencies.sort()
    n = len(latencies)
    ms = [latencies[int(n * q)] * 1e3 for q in (0.5, 0.99, 0.999)]
    print(
        f"rate {rate}/s: {len(starts)} syncs, {slow} over 10 ms; ack latency floor "
        f"p50/p99/p999 ms {ms[0]:.2f} / {ms[1]:.2f} / {ms[2]:.2f}, max {latencies[-1] * 1e3:.1f}"
    )
