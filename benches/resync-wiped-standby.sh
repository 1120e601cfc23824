#!/usr/bin/env bash
# Resync of a wiped standby from a snapshot of the demo KV engine:
#   benches/resync-wiped-standby.sh [SIZE_MB]     (default 256; needs curl, bc)
# Starts a pair on loopback ports 17601/17602 (HTTP 18601/18602) with a
# 64 MiB WAL bound, SIGKILLs the standby, writes SIZE_MB one-MiB values to
# the primary (alone), wipes the standby's data dir, starts it again and
# prints how long until it has applied everything, both nodes' peak RSS and
# their state hashes. Build first: cargo build --release --bin walrep.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-256}
BIN=${WALREP_BIN:-${CARGO_TARGET_DIR:-target}/release/walrep}
D=$(mktemp -d /tmp/resync.XXXX)
common=(--cluster-id r --heartbeat-ms 200 --failover-timeout-ms 1000 --wal-retention-bytes 67108864 --snapshot-records 64 --no-auto-failover)
start() { # id peer-id role listen http peer
  "$BIN" node --id $1 --peer-id $2 --role $3 --listen 127.0.0.1:$4 --http 127.0.0.1:$5 --peer 127.0.0.1:$6 --data-dir $D/$1 "${common[@]}" >$D/$1.log 2>&1 &
  echo $!
}
health() { curl -s 127.0.0.1:$1/health; }
P1=$(start n1 n2 primary 17601 18601 17602)
P2=$(start n2 n1 standby 17602 18602 17601)
for i in $(seq 100); do health 18601 | grep -q '"sync_state":"sync"' && break; sleep 0.1; done
kill -9 $P2; wait $P2 2>/dev/null || true
head -c 1048576 /dev/urandom > $D/value
t0=$(date +%s.%N)
for i in $(seq $SIZE_MB); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary @$D/value 127.0.0.1:18601/kv/key$i)
  [ "$code" = 200 ] || { sleep 0.5; curl -s -o /dev/null -X PUT --data-binary @$D/value 127.0.0.1:18601/kv/key$i; }
done
t1=$(date +%s.%N)
echo "wrote $SIZE_MB MiB in $(echo "$t1 - $t0" | bc) s"
sleep 2
echo "primary WAL on disk: $(du -sh $D/n1/wal | cut -f1) (bound 64 MiB + one 64 MiB segment)"
rm -rf $D/n2
last=$(health 18601 | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_lsn"])')
t0=$(date +%s.%N)
P2=$(start n2 n1 standby 17602 18602 17601)
while true; do
  a=$(health 18602 | python3 -c 'import json,sys; h=json.load(sys.stdin); print(h["applied_lsn"], h["role"])' 2>/dev/null || echo "0 none")
  set -- $a
  if [ "$1" -ge "$last" ] && [ "$2" = standby ]; then break; fi
  sleep 0.05
  now=$(date +%s)
  if [ $(echo "$now - ${t0%.*}" | bc) -gt 300 ]; then echo TIMEOUT; break; fi
done
t1=$(date +%s.%N)
echo "resync of a wiped standby, $SIZE_MB MiB store: $(echo "$t1 - $t0" | bc) s"
echo "peak RSS n1: $(grep VmHWM /proc/$P1/status)  n2: $(grep VmHWM /proc/$P2/status)"
h1=$(health 18601 | python3 -c 'import json,sys; print(json.load(sys.stdin)["state_hash"])'); h2=$(health 18602 | python3 -c 'import json,sys; print(json.load(sys.stdin)["state_hash"])')
echo "state hashes $h1 $h2"
grep -ci "snapshot" $D/n2.log | sed 's/^/n2 log lines about snapshots: /'
kill $P1 $P2; wait 2>/dev/null || true
rm -rf $D
