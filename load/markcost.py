#!/usr/bin/env python3
"""What the write-ahead log's mark adds to each sync, without the daemon.

    load/markcost.py DIR [SECONDS [RATE [ROUNDS]]]
    load/markcost.py target/syncfloor 10 580 4

Before each `fdatasync` the daemon's log rewrites its mark (two 512-byte
sectors at offset 512, src/store/wal.rs) beside the commit's record, so
the sync writes two pages of the file instead of one. This paces a 4 KiB
record write and its `fdatasync` at RATE a second (default 580: the
commits a second `perf trace` counts at the fleet shape), alternating
SECONDS-long passes (default 10) of the record alone and of the record
plus the mark, ROUNDS times (default 4), in the file load/syncfloor.py
uses (records never touch its first page, where the mark is). Prints, for
each kind, this process's CPU time per sync (getrusage, Python's own loop
included, the same in both) and the sync's p50/p99/p999 and longest
latency. Removes its file at the end.
"""
import os
import sys
import time

from ring import SIZE, open_ring, own_cpu

directory = sys.argv[1]
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
rate = int(sys.argv[3]) if len(sys.argv) > 3 else 580
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 4
if seconds <= 0 or rate <= 0 or rounds <= 0:
    sys.exit("SECONDS, RATE and ROUNDS must be above zero")

RECORD = b"r" * 4096
MARK = b"m" * 1024
FIRST_RECORD = 4096


def one_pass(fd, offset, with_mark):
    """SECONDS of paced syncs; returns (latencies, CPU seconds, next offset)."""
    latencies = []
    cpu0 = own_cpu()
    began = time.monotonic()
    due = began
    while due < began + seconds:
        os.pwrite(fd, RECORD, offset)
        offset += len(RECORD)
        if offset >= SIZE:
            offset = FIRST_RECORD
        if with_mark:
            os.pwrite(fd, MARK, 512)
        t = time.monotonic()
        os.fdatasync(fd)
        latencies.append(time.monotonic() - t)
        due += 1.0 / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return latencies, own_cpu() - cpu0, offset


fd, path = open_ring(directory, "markcost.log")
try:
    results = {False: ([], 0.0), True: ([], 0.0)}
    offset = FIRST_RECORD
    for _ in range(rounds):
        for with_mark in (False, True):
            lat, cpu, offset = one_pass(fd, offset, with_mark)
            all_lat, all_cpu = results[with_mark]
            results[with_mark] = (all_lat + lat, all_cpu + cpu)
    for with_mark, (lat, cpu) in results.items():
        lat.sort()
        n = len(lat)

        def q(f):
            return lat[min(n - 1, int(f * n))] * 1e3

        kind = "record + mark" if with_mark else "record alone"
        print(
            f"{kind}: {n} syncs, CPU {cpu / n * 1e6:.0f} us per sync, sync p50 / p99 / "
            f"p999 {q(0.5):.3f} / {q(0.99):.3f} / {q(0.999):.3f} ms, longest {lat[-1] * 1e3:.1f}"
        )
finally:
    os.close(fd)
    os.remove(path)
