#!/usr/bin/env python3
"""How this machine's disk serves fdatasync from several writers at once.

Each of 1, 2 and 3 concurrent loops writes 200 bytes with pwrite and
fdatasyncs, for SECONDS each; prints every loop's count and p50 / p99.
This is what a primary and one or two standbys sharing one disk do per
write (docs/PERFORMANCE.md, "ANY 1 (n1, n2, n3)").

usage: benches/fsync-contention.py [DIR [SECONDS]]   (DIR: on the disk to measure)
"""
import os
import sys
import tempfile
import time
from multiprocessing import Process, Queue


def loop(path, seconds, out):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.posix_fallocate(fd, 0, 64 << 20)
    buf, offset, lat = b"x" * 200, 0, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        os.pwrite(fd, buf, offset)
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
        offset = (offset + 4096) % (64 << 20)
    os.close(fd)
    os.unlink(path)
    lat.sort()
    out.put((len(lat), lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3))


def main():
    where = sys.argv[1] if len(sys.argv) > 1 else "."
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    with tempfile.TemporaryDirectory(dir=where) as d:
        print("loops  fdatasyncs/s  p50 ms  p99 ms   (each loop)")
        for k in (1, 2, 3):
            out = Queue()
            procs = [Process(target=loop, args=(f"{d}/f{i}", seconds, out)) for i in range(k)]
            for p in procs:
                p.start()
            results = [out.get() for _ in procs]
            for p in procs:
                p.join()
            for n, p50, p99 in results:
                print(f"{k:5}  {n / seconds:12.0f}  {p50:6.3f}  {p99:6.3f}")


if __name__ == "__main__":
    main()
