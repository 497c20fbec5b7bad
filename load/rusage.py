#!/usr/bin/env python3
"""Runs a command and records what it used: its CPU seconds (user +
system) and its peak RSS in KiB, on one line of OUT.

    load/rusage.py OUT COMMAND [ARGS...]

The load scripts run their load generator through this: it shares the
machine's cores with the server it measures, so what it takes is part of
reading the server's figures. The peak RSS cannot read below this
wrapper's own (about 14 MiB): the kernel counts the forked copy of it
that the command replaces. Exits with the command's status; SIGTERM
and SIGINT (from `timeout`, or ^C) are passed on to the command.
"""
import os
import signal
import subprocess
import sys

if len(sys.argv) < 3:
    sys.exit(__doc__)
out, command = sys.argv[1], sys.argv[2:]
child = subprocess.Popen(command)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda number, _frame: child.send_signal(number))
# wait4 is retried after a handled signal (PEP 475) until the child ends.
_, status, usage = os.wait4(child.pid, 0)
with open(out, "w") as f:
    f.write(f"{usage.ru_utime + usage.ru_stime:.2f} {usage.ru_maxrss}\n")
sys.exit(os.waitstatus_to_exitcode(status))
