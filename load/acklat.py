#!/usr/bin/env python3
"""Server-side ack latency from a capture of the daemon's port.

    tcpdump -i lo -tt -n -l "tcp port PORT" | load/acklat.py PORT

For each client connection: the time from the first client segment carrying
payload (a device's batch frame) to the next server segment carrying payload
on that connection (its ack). A subscriber's connection sends almost nothing
and adds a handful of pairs at most. Prints the count and p50/p99/p999 in ms.
"""
import re
import sys

port = sys.argv[1]
line_re = re.compile(r"^(\d+\.\d+) IP 127\.0\.0\.1\.(\d+) > 127\.0\.0\.1\.(\d+):.* length (\d+)")
waiting = {}  # client port -> arrival time of its unanswered frame
latencies = []
for line in sys.stdin:
    m = line_re.match(line)
    if not m or int(m.group(4)) == 0:
        continue
    t, src, dst = float(m.group(1)), m.group(2), m.group(3)
    if dst == port:
        waiting.setdefault(src, t)
    elif src == port and dst in waiting:
        latencies.append(t - waiting.pop(dst))
latencies.sort()
if not latencies:
    print("acks 0")
    sys.exit()


def q(p):
    return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000


print(f"acks {len(latencies)}: p50/p99/p999 ms {q(.5):.2f} / {q(.99):.2f} / {q(.999):.2f}")
