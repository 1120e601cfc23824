#!/usr/bin/env python3
"""What a commit costs SQLite in WAL journal mode with synchronous=FULL (an
fsync per commit) and NORMAL (none; the SQLite engine's choice, see
walrep-daemon/src/sqlite/mod.rs): 2000 one-row transactions each, the two
settings alternated three times, median per commit.
    python3 benches/sqlite-commit-cost.py [DIR]   (default: a temp dir)"""
import sqlite3, time, os, statistics, sys, tempfile
d = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="sqlite-commit-")
def run(sync, n=2000):
    p = f"{d}/bench-{sync}.db"
    for s in ("", "-wal", "-shm"):
        try: os.remove(p + s)
        except FileNotFoundError: pass
    c = sqlite3.connect(p, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL"); c.execute(f"PRAGMA synchronous={sync}")
    c.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB)")
    t = []
    for i in range(n):
        t0 = time.perf_counter()
        c.execute("BEGIN IMMEDIATE"); c.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (b"k%d" % i, b"x" * 100)); c.execute("COMMIT")
        t.append(time.perf_counter() - t0)
    c.close()
    return statistics.median(t) * 1e6
res = {"FULL": [], "NORMAL": []}
for _ in range(3):
    for s in ("FULL", "NORMAL"):
        res[s].append(run(s))
for s, v in res.items():
    print(f"{s}: median per-commit us over 3 runs of 2000: {sorted(v)[1]:.1f} (runs {', '.join(f'{x:.1f}' for x in v)})")
print(f"ratio FULL/NORMAL: {sorted(res['FULL'])[1]/sorted(res['NORMAL'])[1]:.1f}")
