#!/usr/bin/env python3
"""Time commands run alternately (A B B A A B ...), so that slow drift of a busy machine hits
all of them alike; prints the median and mean of each, and each one's median minus the
first's. Usage: interleave.py RUNS CMD1 CMD2 ...   (each CMD is one shell-free string)."""
import statistics
import subprocess
import sys
import time

runs = int(sys.argv[1])
cmds = sys.argv[2:]
argvs = [c.split() for c in cmds]
times = [[] for _ in cmds]
for a in argvs * 3:  # warm-up
    subprocess.run(a, check=True)
for i in range(runs):
    order = range(len(argvs)) if i % 2 == 0 else reversed(range(len(argvs)))
    for j in order:
        t = time.perf_counter()
        subprocess.run(argvs[j], check=True)
        times[j].append((time.perf_counter() - t) * 1000)
base = statistics.median(times[0])
for c, t in zip(cmds, times):
    m = statistics.median(t)
    print(f"{m:8.2f} ms median {statistics.mean(t):8.2f} mean {m - base:+7.2f} ms  {c.split('/')[-1]}")
