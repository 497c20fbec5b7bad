#!/usr/bin/env python3
"""What one small write costs in a file the page cache holds in large folios.

    load/pagecost.py DIR [WRITES [ROUNDS]]
    load/pagecost.py target/syncfloor 100000 2

The daemon's write-ahead log is 8 MiB of zeros written when it is created,
then overwritten by small records (`pwrite`s of 1-2 KiB at the fleet
shape). On filesystems that give the page cache large folios (ext4 on
recent kernels), how the zeros were written decides the folios' size, and
a small write into a large folio walks every block of it. This creates two
such files under DIR, one written in 1 MiB pieces and one a 4 KiB page at
a time, both synced, then times WRITES (default 100,000) 1 KiB `pwrite`s
into each, round-robin from offset 4096 on, ROUNDS times (default 2), and
prints this process's CPU time per write (getrusage) for each: the
difference is what the folio's size costs each write. Removes its files at
the end.
"""
import os
import sys

from ring import SIZE, open_ring, own_cpu

directory = sys.argv[1]
writes = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
if writes <= 0 or rounds <= 0:
    sys.exit("WRITES and ROUNDS must be above zero")

RECORD = b"r" * 1024


def per_write(fd):
    offset = 4096
    cpu0 = own_cpu()
    for _ in range(writes):
        os.pwrite(fd, RECORD, offset)
        offset += len(RECORD)
        if offset >= SIZE:
            offset = 4096
    return (own_cpu() - cpu0) / writes * 1e6


files = [("written in 1 MiB pieces", *open_ring(directory, "pagecost-1m", 1 << 20))]
try:
    files.append(("written a page at a time", *open_ring(directory, "pagecost-4k")))
    for _ in range(rounds):
        print(", ".join(f"{kind}: {per_write(fd):.2f} us per 1 KiB pwrite" for kind, fd, _ in files))
finally:
    for _, fd, path in files:
        os.close(fd)
        os.remove(path)
