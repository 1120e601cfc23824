#!/usr/bin/env bash
# The failover story of three nodes in Docker: builds a static walrep and a
# FROM-scratch image (scripts/compose-lib.sh), starts the witness and n1
# (primary), n2 and n3 (standbys) with deploy/docker-compose.three.yml, each
# node naming the two others as peers and the witness as arbiter, writes
# keys to n1 (each acknowledged once both standbys have it), kills the n1
# container, shows which standby took over through the witness and that the
# other follows it at the new epoch without an operator, writes more,
# restarts n1 and shows it rejoin as a standby; then checks that no
# acknowledged write is lost, that no two acknowledged writes share a
# record, and that the three state hashes are equal. Removes the
# containers, networks and volumes. Replication and the witness run over
# mutual TLS, the HTTP API over HTTPS, writes carry the HTTP token. On a
# machine without a Docker engine it says so and exits 0.
#
#   scripts/compose-three.sh [KEYS]   (KEYS written before the crash, default 300)
#
# The static build goes to $CARGO_TARGET_DIR if set, else ./target.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${1:-300}
AFTER=$((KEYS / 5 + 1))
PROJECT=walrepthree
IMAGE=walrep:local
COMPOSE_FILE=deploy/docker-compose.three.yml
NAMES=n1,n2,n3
# shellcheck source=scripts/compose-lib.sh
. scripts/compose-lib.sh
ADDR_n1=https://127.0.0.1:8001
ADDR_n2=https://127.0.0.1:8002
ADDR_n3=https://127.0.0.1:8003
addr() { local v=ADDR_$1; echo "${!v}"; }

ACKED=$CTX/acked # "key value lsn epoch" per acknowledged write

build_image

step "starting the witness, n1 (primary), n2 and n3 (standbys), each with --arbiter witness://witness:7010"
compose_up
wait_until "n1 writable" 60 is_writable_primary "$ADDR_n1"
for n in n2 n3; do
  wait_until "$n standby" 60 is_standby "$(addr $n)"
  # Eligible: the witness holds it in the sync set, so it may promote.
  wait_until "$n in the witness's sync set" 60 is_eligible "$(addr $n)"
done
for n in n1 n2 n3; do wait_until "$n healthy (Docker health check)" 60 container_healthy $n; done
compose ps | sed 's/^/  /'
cli status --addr "$ADDR_n1" --addr "$ADDR_n2" --addr "$ADDR_n3" | sed 's/^/  /'

step "writing $KEYS keys to n1"
write_keys "$ADDR_n1" k "$KEYS" "$ACKED"
echo "  $(count "$ACKED") writes acknowledged; n1 last_lsn $(field last_lsn "$ADDR_n1"), n2 flushed $(field flushed_lsn "$ADDR_n2"), n3 flushed $(field flushed_lsn "$ADDR_n3")"

step "docker kill n1 (SIGKILL)"
for n in n2 n3; do wait_until "$n in the witness's sync set" 30 is_eligible "$(addr $n)"; done
N1_CID=$(compose ps -q n1)
KILLED=$(now_ms)
docker kill "$N1_CID" >/dev/null
# The first write after the crash goes to whichever standby takes over.
NEW=
deadline=$(($(date +%s) + 60))
until [ -n "$NEW" ]; do
  for n in n2 n3; do
    if put_once "$(addr $n)" failover-probe "$ACKED"; then
      NEW=$n
      break
    fi
  done
  if [ -z "$NEW" ] && [ "$(date +%s)" -ge "$deadline" ]; then
    echo "compose-three: no standby took over within 60 s; last error: $LAST_ERR" >&2
    compose logs --tail=30 >&2 || true
    exit 1
  fi
  [ -n "$NEW" ] || sleep 0.02
done
FAILOVER_MS=$(($(now_ms) - KILLED))
OTHER=$([ "$NEW" = n2 ] && echo n3 || echo n2)
NEW_ADDR=$(addr $NEW)
OTHER_ADDR=$(addr $OTHER)
NEW_EPOCH=$(field epoch "$NEW_ADDR")
echo "  $NEW took over: its first write acknowledged ${FAILOVER_MS} ms after the kill (epoch $NEW_EPOCH)"
follows() { is_standby "$OTHER_ADDR" && [ "$(field epoch "$OTHER_ADDR")" = "$NEW_EPOCH" ] && [ "$(field leader_id "$OTHER_ADDR")" = "$NEW" ]; }
wait_until "$OTHER to follow $NEW at epoch $NEW_EPOCH" 30 follows
FOLLOW_MS=$(($(now_ms) - KILLED))
echo "  $OTHER follows $NEW at epoch $NEW_EPOCH (${FOLLOW_MS} ms after the kill, as polled)"

step "writing $AFTER keys to $NEW"
write_keys "$NEW_ADDR" a "$AFTER" "$ACKED"

step "docker start n1 (same settings: WALREP_ROLE=primary, but its data says epoch 1)"
docker start "$N1_CID" >/dev/null
TARGET=$(field last_lsn "$NEW_ADDR")
caught_up() { is_standby "$1" && [ "$(field applied_lsn "$1")" -ge "$TARGET" ] 2>/dev/null; }
wait_until "n1 rejoined and caught up to LSN $TARGET" 60 caught_up "$ADDR_n1"
wait_until "$OTHER caught up to LSN $TARGET" 60 caught_up "$OTHER_ADDR"
cli status --addr "$ADDR_n1" --addr "$ADDR_n2" --addr "$ADDR_n3" | sed 's/^/  /'
N1_REJOIN="$(field role "$ADDR_n1") at epoch $(field epoch "$ADDR_n1"), $(field rewound_records "$ADDR_n1") records rewound"

step "checking every acknowledged write on $NEW"
LOST=$(lost_in "$ACKED" "$NEW_ADDR" | wc -l)
SAME_RECORD=$(awk '{print $3, $4}' "$ACKED" | sort | uniq -d | wc -l)
H1=$(field state_hash "$ADDR_n1")
H2=$(field state_hash "$ADDR_n2")
H3=$(field state_hash "$ADDR_n3")
REGISTER=$(arbiter_of "$NEW_ADDR")

FAIL=()
[ "$LOST" -eq 0 ] || FAIL+=("$LOST acknowledged writes were lost")
[ "$SAME_RECORD" -eq 0 ] || FAIL+=("$SAME_RECORD (lsn, epoch) pairs were acknowledged twice")
{ [ "$H1" = "$H2" ] && [ "$H2" = "$H3" ]; } || FAIL+=("state hashes differ")
[ "$(field role "$ADDR_n1")" = standby ] || FAIL+=("n1 is $(field role "$ADDR_n1") after its restart")
[ "$(register_epoch "$NEW_ADDR")" = "$NEW_EPOCH" ] || FAIL+=("the witness's register is not at $NEW's epoch $NEW_EPOCH")

step "report"
echo "  nodes                     n1, n2, n3 and the witness; commit mode remote-flush, each write waiting for both standbys"
echo "  arbiter                   $REGISTER"
echo "  writes acknowledged       $(count "$ACKED")"
echo "  failover time             ${FAILOVER_MS} ms (docker kill n1 -> first acknowledged write on $NEW)"
echo "  the other standby         $OTHER follows $NEW at epoch $NEW_EPOCH, ${FOLLOW_MS} ms after the kill"
echo "  n1 after its restart      $N1_REJOIN"
echo "  lost acknowledged writes  $LOST"
echo "  one writer per epoch      $SAME_RECORD (lsn, epoch) acknowledged twice"
echo "  state hashes              n1 $H1, n2 $H2, n3 $H3"
finish
