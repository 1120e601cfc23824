#!/usr/bin/env bash
# Resync of a wiped standby from a snapshot, against the physical floor:
#   benches/resync-wiped-standby.sh [SIZE_MB [ENGINE]]   (default 256 kv; ENGINE kv or sqlite)
# Needs curl, bc, python3. Starts a pair of ENGINE nodes on loopback ports
# 17601/17602 (HTTP 18601/18602) with a 64 MiB WAL bound, SIGKILLs the
# standby, writes SIZE_MB one-MiB values to the primary (alone), then
# overwrites them until the primary's WAL has let go of its first record
# (so the standby must resync from a snapshot), wipes the standby's data dir, starts it again and times it until it has applied
# everything. In the same run, `walrep bench-floor` measures the floor for
# the snapshot's bytes: the slower of copying them over a loopback TCP
# socket and writing them durably (fdatasync) to the same disk. Prints both
# nodes' peak RSS (VmHWM), their state hashes, and one table row:
#   | engine | size | snapshot | resync | floor (tcp / disk) | resync / floor | peak RSS n1 / n2 |
# Build first: cargo build --release -p walrep-daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-256}
ENGINE=${2:-kv}
case "$ENGINE" in kv|sqlite) ;; *) echo "ENGINE must be kv or sqlite, not $ENGINE" >&2; exit 2;; esac
BIN=${WALREP_BIN:-${CARGO_TARGET_DIR:-target}/release/walrep}
D=$(mktemp -d /tmp/resync.XXXX)
common=(--engine $ENGINE --cluster-id r --heartbeat-ms 200 --failover-timeout-ms 1000 --wal-retention-bytes 67108864 --snapshot-records 64 --no-auto-failover)
start() { # id peer-id role listen http peer
  "$BIN" node --id $1 --peer-id $2 --role $3 --listen 127.0.0.1:$4 --http 127.0.0.1:$5 --peer 127.0.0.1:$6 --data-dir $D/$1 "${common[@]}" >>$D/$1.log 2>&1 &
  echo $!
}
health() { curl -s 127.0.0.1:$1/health; }
field() { health $1 | python3 -c "import json,sys; print(json.load(sys.stdin)[\"$2\"])"; }
rss_mib() { echo "$(grep VmHWM /proc/$1/status | awk '{print $2}') / 1024" | bc; }
P1=$(start n1 n2 primary 17601 18601 17602)
P2=$(start n2 n1 standby 17602 18602 17601)
trap 'kill $P1 $P2 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] && echo "kept $D" || rm -rf $D' EXIT
# In sync with a standby it has heard from: a primary that never has does
# not go on alone when it is lost, and would wait for it forever. A
# "connected, in sync" /health can come before the standby's first answer,
# so wait for the event itself: one write acknowledged, which in
# remote-flush needs the standby's flush ack (curl blocks until it comes).
for i in $(seq 200); do h=$(health 18601 || true); [[ $h == *'"sync_state":"sync"'* && $h == *'"connected":true'* ]] && break; sleep 0.1; done
for i in $(seq 20); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary ready 127.0.0.1:18601/kv/ready)" = 200 ] && break
  [ $i = 20 ] && { echo "the primary never acknowledged a write with its standby" >&2; exit 1; }
done
kill -9 $P2; wait $P2 2>/dev/null || true
head -c 1048576 /dev/urandom > $D/value
t0=$(date +%s.%N)
for i in $(seq $SIZE_MB); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary @$D/value 127.0.0.1:18601/kv/key$i)
  [ "$code" = 200 ] || { sleep 0.5; curl -s -o /dev/null -X PUT --data-binary @$D/value 127.0.0.1:18601/kv/key$i; }
done
t1=$(date +%s.%N)
echo "$ENGINE: wrote $SIZE_MB MiB in $(echo "$t1 - $t0" | bc) s"
# The standby must need a snapshot: overwrite the same keys (the store
# keeps its size) until the primary's WAL no longer starts at record 1.
i=0
while [ "$(field 18601 first_lsn)" -le 1 ]; do
  i=$((i % SIZE_MB + 1))
  curl -s -o /dev/null -X PUT --data-binary @$D/value 127.0.0.1:18601/kv/key$i
done
sleep 2
echo "primary WAL on disk: $(du -sh $D/n1/wal | cut -f1) (bound 64 MiB + one 64 MiB segment); engine state: $(du -sh $D/n1/$ENGINE | cut -f1)"
rm -rf $D/n2
sync
last=$(field 18601 last_lsn)
t0=$(date +%s.%N)
P2=$(start n2 n1 standby 17602 18602 17601)
while true; do
  a=$(health 18602 | python3 -c 'import json,sys; h=json.load(sys.stdin); print(h["applied_lsn"], h["role"])' 2>/dev/null || echo "0 none")
  set -- $a
  if [ "$1" -ge "$last" ] && [ "$2" = standby ]; then break; fi
  sleep 0.05
  now=$(date +%s)
  if [ $(echo "$now - ${t0%.*}" | bc) -gt 900 ]; then echo TIMEOUT; break; fi
done
t1=$(date +%s.%N)
resync=$(echo "$t1 - $t0" | bc)
echo "resync of a wiped standby, $SIZE_MB MiB $ENGINE store: $resync s"
rss1=$(rss_mib $P1); rss2=$(rss_mib $P2)
echo "peak RSS n1: $rss1 MiB  n2: $rss2 MiB"
echo "state hashes $(field 18601 state_hash) $(field 18602 state_hash)"
{ grep -ci "snapshot" $D/n2.log || true; } | sed 's/^/n2 log lines about snapshots: /'
grep -E "snapshot built|restored from snapshot" $D/n1.log $D/n2.log | sed 's/^.*\(snapshot built\|restored from snapshot\)/  \1/' || true
bytes=$(grep "snapshot built" $D/n1.log | tail -1 | grep -o 'bytes=[0-9]*' | cut -d= -f2)
bytes=${bytes:-$((SIZE_MB * 1048576))}
kill $P1 $P2; wait 2>/dev/null || true
sync
floor=$("$BIN" bench-floor --bytes $bytes --dir $D --json | tail -1)
read -r tcp disk fl <<<"$(echo "$floor" | python3 -c 'import json,sys; f=json.load(sys.stdin); print(f["tcp_seconds"], f["disk_seconds"], f["floor_seconds"])')"
ratio=$(echo "scale=2; $resync / $fl" | bc)
echo "floor for $bytes bytes: loopback TCP $tcp s, durable write $disk s"
echo "| engine | size | snapshot | resync | floor (tcp / disk) | resync / floor | peak RSS n1 / n2 |"
echo "|---|---:|---:|---:|---:|---:|---:|"
printf '| %s | %s MiB | %s MiB | %.2f s | %.2f s (%.2f / %.2f) | %s | %s / %s MiB |\n' \
  "$ENGINE" "$SIZE_MB" "$(echo "$bytes / 1048576" | bc)" "$resync" "$fl" "$tcp" "$disk" "$ratio" "$rss1" "$rss2"
