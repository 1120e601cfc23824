#!/usr/bin/env bash
# The failover demo in Docker: builds a static walrep and a FROM-scratch
# image, starts the witness (`walrep witness`, the arbiter) and n1 (primary)
# and n2 (standby) with deploy/docker-compose.yml, both nodes with
# `--arbiter witness://witness:7010`, writes keys, kills the primary
# container, shows the failover (through the witness's register), restarts
# it, shows the rejoin, then cuts the peer link of the new primary with
# `docker network disconnect` (both nodes alive, reachable from the host,
# and both still reaching the witness), writes to both sides, reconnects,
# and checks what docs/DESIGN.md (section 15) promises with an arbiter,
# whatever the on_standby_loss policy: the standby promotes through the
# witness, the cut-off primary learns the new epoch from the witness and
# acknowledges nothing alone, and no acknowledged write is lost; also one
# writer per epoch and equal state hashes. Then it removes the containers,
# networks and volumes. Replication and the witness run over mutual TLS (a
# throwaway CA from `walrep certs`, the witness's certificate from
# `walrep certs --witness`), the HTTP API over HTTPS (a certificate from the
# same CA naming 127.0.0.1 and localhost; the client commands trust the CA
# with --tls-ca) and writes carry the HTTP token. On a machine without a
# Docker engine it says so and exits 0.
#
#   scripts/compose-demo.sh [KEYS [POLICY]]
#     KEYS    keys written before the crash (default 500)
#     POLICY  on_standby_loss of both nodes: solo or block (default
#             $WALREP_ON_STANDBY_LOSS, else solo, the daemon's default);
#             with the witness both lose nothing acknowledged
#
# The static build goes to $CARGO_TARGET_DIR if set, else ./target.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${1:-500}
AFTER=$((KEYS / 5 + 1))
POLICY=${2:-${WALREP_ON_STANDBY_LOSS:-solo}}
case $POLICY in
  solo | block) ;;
  *)
    echo "compose-demo: POLICY must be solo or block, not '$POLICY'" >&2
    exit 2
    ;;
esac
export WALREP_ON_STANDBY_LOSS=$POLICY
PROJECT=walrepdemo
IMAGE=walrep:local
N1=https://127.0.0.1:8001
N2=https://127.0.0.1:8002

COMPOSE_FILE=deploy/docker-compose.yml
NAMES=n1,n2
# shellcheck source=scripts/compose-lib.sh
. scripts/compose-lib.sh

ACKED=$CTX/acked         # "key value lsn epoch" per acknowledged write, before the cut
NEW_ACKED=$CTX/new-acked # ... acknowledged by the new primary during the cut
OLD_ACKED=$CTX/old-acked # ... acknowledged by the cut-off primary (alone)
OLD_REFUSED=$CTX/old-refused
STOP=$CTX/stop
WRITER=
cleanup_extra() {
  if [ -n "$WRITER" ]; then kill "$WRITER" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}

build_image

step "starting the witness, n1 (primary) and n2 (standby), both with --arbiter witness://witness:7010"
compose_up
wait_until "n1 writable" 60 is_writable_primary $N1
wait_until "n2 standby" 60 is_standby $N2
# Eligible: the witness holds n2 in the sync set, so it may promote.
wait_until "n2 in the witness's sync set" 60 is_eligible $N2
wait_until "n1 healthy (Docker health check)" 60 container_healthy n1
wait_until "n2 healthy (Docker health check)" 60 container_healthy n2
compose ps | sed 's/^/  /'
cli status --addr $N1 | sed 's/^/  /'

step "writing $KEYS keys to n1"
write_keys $N1 k "$KEYS" "$ACKED"
echo "  $(wc -l <"$ACKED") writes acknowledged; n1 last_lsn $(field last_lsn $N1), n2 applied_lsn $(field applied_lsn $N2)"

step "docker kill n1 (SIGKILL)"
wait_until "n2 in the witness's sync set" 30 is_eligible $N2
N1_CID=$(compose ps -q n1) # before the clock starts: docker-compose alone takes ~1 s to start
KILLED=$(now_ms)
docker kill "$N1_CID" >/dev/null
put_until "n2 to take over" 60 $N2 failover-probe "$ACKED"
FAILOVER_MS=$(($(now_ms) - KILLED))
echo "  n2 acknowledged its first write ${FAILOVER_MS} ms after the kill"
cli status --addr $N2 | sed 's/^/  /'

step "writing $AFTER keys to n2"
write_keys $N2 a "$AFTER" "$ACKED"

step "docker start n1 (same settings: WALREP_ROLE=primary, but its data says epoch 1)"
docker start "$N1_CID" >/dev/null
TARGET=$(field last_lsn $N2)
caught_up() { is_standby $N1 && [ "$(field applied_lsn $N1)" -ge "$TARGET" ] 2>/dev/null; }
wait_until "n1 rejoined and caught up to LSN $TARGET" 60 caught_up
cli status --addr $N1 | sed 's/^/  /'
RESTART_REJOIN="$(field role $N1) at epoch $(field epoch $N1), $(field rewound_records $N1) records rewound"

# The partition: n2 is the primary (epoch 2), n1 its standby. Cutting n2 off
# the peer network leaves both running and reachable from the host through
# their own client networks.
OLD=n2 OLD_ADDR=$N2 NEW=n1 NEW_ADDR=$N1
PEER_NET=${PROJECT}_peer
OLD_CID=$(compose ps -q $OLD)

step "writing $AFTER keys to $OLD until $NEW is eligible to take over"
write_keys $OLD_ADDR b "$AFTER" "$ACKED"
wait_until "$NEW eligible" 30 is_eligible $NEW_ADDR
OLD_EPOCH=$(field epoch $OLD_ADDR)
REWOUND_BEFORE=$(field rewound_records $OLD_ADDR)

step "partition: docker network disconnect $PEER_NET $OLD (on_standby_loss = $POLICY)"
CUT=$(now_ms)
docker network disconnect "$PEER_NET" "$OLD_CID"
if cli healthcheck --addr $OLD_ADDR >/dev/null 2>&1; then
  echo "  $OLD still answers the host on $OLD_ADDR (its port is on ${PROJECT}_$OLD-client)"
else
  echo "compose-demo: $OLD no longer answers on $OLD_ADDR: the cut took its client port too" >&2
  exit 1
fi

# One writer on the cut-off primary, for as long as the cut lasts.
old_writer() {
  local i=0
  while [ ! -e "$STOP" ]; do
    if ! put_once $OLD_ADDR "p$i" "$OLD_ACKED"; then
      echo "$LAST_ERR" | head -n 1 >>"$OLD_REFUSED"
      sleep 0.05
    fi
    i=$((i + 1))
  done
}
old_writer &
WRITER=$!

put_until "$NEW to promote through the witness" 60 $NEW_ADDR cut-probe "$NEW_ACKED"
CUT_FAILOVER_MS=$(($(now_ms) - CUT))
echo "  $NEW promoted: it acknowledged its first write ${CUT_FAILOVER_MS} ms after the cut"
# With the witness, whatever the policy: the cut-off primary cannot take
# its standby out of the sync set (the promotion moved the register on), and
# it reads the new epoch from the witness, across the cut.
NEW_EPOCH_CUT=$(field epoch $NEW_ADDR)
old_told() { [ "$(field epoch $OLD_ADDR)" = "$NEW_EPOCH_CUT" ]; }
wait_until "$OLD to learn epoch $NEW_EPOCH_CUT from the witness" 30 old_told
TOLD_MS=$(($(now_ms) - CUT))
OLD_ROLE_CUT=$(field role $OLD_ADDR)
echo "  $OLD learned epoch $NEW_EPOCH_CUT from the witness ${TOLD_MS} ms after the cut (the peer link still cut): now $OLD_ROLE_CUT"
# Checked once the figures are taken (docker exec takes a while): the cut
# holds, and both nodes still reach the witness.
if docker exec "$OLD_CID" /walrep healthcheck --addr $NEW:8001 >/dev/null 2>&1; then
  echo "compose-demo: $OLD still reaches $NEW:8001 across the cut" >&2
  exit 1
fi
echo "  $OLD cannot reach $NEW:8001 any more (checked with docker exec)"
for node in $OLD $NEW; do
  if docker exec "$(compose ps -q $node)" /walrep healthcheck --addr witness:8010 >/dev/null 2>&1; then
    echo "  $node still reaches the witness (witness:8010, checked with docker exec)"
  else
    echo "compose-demo: $node no longer reaches the witness: the cut took its arbiter network too" >&2
    exit 1
  fi
done
cli status --addr $NEW_ADDR | sed 's/^/  /'
write_keys $NEW_ADDR q "$AFTER" "$NEW_ACKED"
echo "  $NEW acknowledged $(count "$NEW_ACKED") writes during the cut"

refused_twice() { [ "$(count "$OLD_REFUSED")" -ge 2 ]; }
wait_until "$OLD refusing writes" 30 refused_twice
touch "$STOP"
wait "$WRITER"
WRITER=
touch "$OLD_ACKED" "$OLD_REFUSED"
NEW_CUT_ACKED=$(count "$NEW_ACKED")
OLD_ACKED_N=$(count "$OLD_ACKED")
OLD_REFUSED_N=$(count "$OLD_REFUSED")
FIRST_REFUSAL=$(head -n 1 "$OLD_REFUSED")
LAST_REFUSAL=$(tail -n 1 "$OLD_REFUSED")
# walrep's own refusals: 503 (nothing written) or 504 (the write was
# appended before the node learned it was deposed: outcome unknown, and
# here never acknowledged; the rejoin rewinds it). Anything else (a
# connection error, a 500) is not a clear answer.
UNCLEAR_REFUSALS=$(grep -Ecv 'answered 50[34]' "$OLD_REFUSED" || true)
echo "  $OLD during the cut: $OLD_ACKED_N writes acknowledged alone, $OLD_REFUSED_N refused"
[ -z "$FIRST_REFUSAL" ] || echo "  first refusal: $FIRST_REFUSAL"
[ -z "$LAST_REFUSAL" ] || echo "  last refusal:  $LAST_REFUSAL"
cli status --addr $OLD_ADDR | sed 's/^/  /'

step "reconnect: docker network connect --alias $OLD $PEER_NET $OLD"
HEALED=$(now_ms)
docker network connect --alias $OLD "$PEER_NET" "$OLD_CID"
TARGET=$(field last_lsn $NEW_ADDR)
old_caught_up() { is_standby $OLD_ADDR && [ "$(field applied_lsn $OLD_ADDR)" -ge "$TARGET" ] 2>/dev/null; }
wait_until "$OLD rejoined as standby and caught up to LSN $TARGET" 60 old_caught_up
REJOIN_MS=$(($(now_ms) - HEALED))
cli status --addr $OLD_ADDR | sed 's/^/  /'

step "writing $AFTER keys to $NEW after the heal: the pair must be back in sync"
write_keys $NEW_ADDR h "$AFTER" "$NEW_ACKED"
wait_until "$OLD eligible again (in sync with $NEW)" 30 is_eligible $OLD_ADDR
TARGET=$(field last_lsn $NEW_ADDR)
wait_until "$OLD caught up to LSN $TARGET" 30 old_caught_up
echo "  $OLD is eligible again; $NEW $(field sync_state $NEW_ADDR), solo $(field solo $NEW_ADDR)"
REWOUND=$(($(field rewound_records $OLD_ADDR) - REWOUND_BEFORE))
# rewound/epoch<E>-<first lsn>-<last lsn>.wal, as "E FIRST LAST" lines.
docker cp "$OLD_CID:/data/rewound" - 2>/dev/null | tar -tf - 2>/dev/null |
  sed -n 's#^.*/epoch\([0-9]*\)-0*\([0-9][0-9]*\)-0*\([0-9][0-9]*\)\.wal$#\1 \2 \3#p' >"$CTX/rewound" || true
REWOUND_FILES=$(count "$CTX/rewound")

step "checking every acknowledged write on $NEW"
LOST=$(lost_in "$ACKED" $NEW_ADDR | wc -l)
LOST_NEW=$(lost_in "$NEW_ACKED" $NEW_ADDR | wc -l)
lost_in "$OLD_ACKED" $NEW_ADDR >"$CTX/lost-alone"
LOST_ALONE=$(count "$CTX/lost-alone")
# One writer per epoch: no two acknowledged writes name the same record.
SAME_RECORD=$(cat "$ACKED" "$NEW_ACKED" "$OLD_ACKED" | awk '{print $3, $4}' | sort | uniq -d | wc -l)
# ... and the two primaries of the cut never acknowledged in the same epoch.
SHARED_EPOCHS=$(comm -12 <(awk '{print $4}' "$OLD_ACKED" | sort -u) <(awk '{print $4}' "$NEW_ACKED" | sort -u) | wc -l)
H1=$(field state_hash $N1)
H2=$(field state_hash $N2)
OLD_ROLE=$(field role $OLD_ADDR)
OLD_EPOCH_NOW=$(field epoch $OLD_ADDR)
NEW_EPOCH=$(field epoch $NEW_ADDR)
REGISTER=$(arbiter_of $NEW_ADDR)
REGISTER_EPOCH=$(register_epoch $NEW_ADDR)
WITNESS_SWAPS=$(compose logs --no-color witness 2>/dev/null | grep -c 'witness swap' || true)

FAIL=()
[ "$LOST" -eq 0 ] || FAIL+=("$LOST writes acknowledged before the cut were lost")
[ "$LOST_NEW" -eq 0 ] || FAIL+=("$LOST_NEW writes acknowledged by the new primary were lost")
[ "$SAME_RECORD" -eq 0 ] || FAIL+=("$SAME_RECORD (lsn, epoch) pairs were acknowledged twice")
[ "$SHARED_EPOCHS" -eq 0 ] || FAIL+=("$OLD and $NEW both acknowledged writes in $SHARED_EPOCHS epoch(s)")
[ "$H1" = "$H2" ] || FAIL+=("state hashes differ")
if [ "$OLD_ROLE" != standby ] || [ "$OLD_EPOCH_NOW" != "$NEW_EPOCH" ]; then
  FAIL+=("$OLD is $OLD_ROLE at epoch $OLD_EPOCH_NOW, $NEW at epoch $NEW_EPOCH")
fi
[ "$NEW_EPOCH" -gt "$OLD_EPOCH" ] || FAIL+=("$NEW did not promote (epoch $NEW_EPOCH)")
# With the witness, for both policies: nothing acknowledged alone, nothing lost.
[ "$OLD_ACKED_N" -eq 0 ] || FAIL+=("$POLICY: $OLD acknowledged $OLD_ACKED_N writes while cut off, though $NEW promoted through the witness")
[ "$LOST_ALONE" -eq 0 ] || FAIL+=("$POLICY: $LOST_ALONE writes acknowledged by $OLD were lost")
[ "$OLD_REFUSED_N" -gt 0 ] || FAIL+=("$POLICY: $OLD refused no write while cut off")
[ "$UNCLEAR_REFUSALS" -eq 0 ] || FAIL+=("$POLICY: $UNCLEAR_REFUSALS refusals were neither a 503 nor a 504 from walrep")
[ "$REGISTER_EPOCH" = "$NEW_EPOCH" ] || FAIL+=("the witness's register is at epoch '$REGISTER_EPOCH', $NEW at $NEW_EPOCH")

step "report"
echo "  commit mode               remote-flush"
echo "  arbiter                   $REGISTER"
echo "  witness swaps             $WITNESS_SWAPS (bootstrap, sync set changes, promotions; docker-compose logs witness)"
echo "  writes acknowledged       $(count "$ACKED") before the cut"
echo "  failover time             ${FAILOVER_MS} ms (docker kill n1 -> first acknowledged write on n2)"
echo "  n1 after its restart      $RESTART_REJOIN"
echo "  -- partition (docker network disconnect $PEER_NET $OLD, $OLD primary at epoch $OLD_EPOCH)"
echo "  on_standby_loss           $POLICY"
echo "  failover / promotion      $NEW primary at epoch $NEW_EPOCH, first acknowledged write ${CUT_FAILOVER_MS} ms after the cut"
echo "  new primary acknowledged  $NEW_CUT_ACKED during the cut, $(($(count "$NEW_ACKED") - NEW_CUT_ACKED)) after the heal"
echo "  old primary alone         $OLD_ACKED_N acknowledged, $OLD_REFUSED_N refused during the cut; learned epoch $NEW_EPOCH_CUT from the witness ${TOLD_MS} ms after the cut ($OLD_ROLE_CUT)"
[ -z "$FIRST_REFUSAL" ] || echo "  first refusal             ${FIRST_REFUSAL#walrep: }"
[ "$LAST_REFUSAL" = "$FIRST_REFUSAL" ] || echo "  last refusal              ${LAST_REFUSAL#walrep: }"
echo "  rejoin after reconnect    $OLD_ROLE at epoch $OLD_EPOCH_NOW, ${REJOIN_MS} ms"
REWOUND_RANGES=$(awk '{printf "%sepoch %s lsn %s-%s", (NR > 1 ? ", " : ""), $1, $2, $3}' "$CTX/rewound")
echo "  rewound on $OLD            $REWOUND records (written, never acknowledged), $REWOUND_FILES file(s) in /data/rewound/${REWOUND_RANGES:+ ($REWOUND_RANGES)}"
echo "  lost acknowledged writes  $LOST before the cut, $LOST_NEW of the new primary's, $LOST_ALONE of the old primary's alone"
echo "  one writer per epoch      $SAME_RECORD (lsn, epoch) acknowledged twice, $SHARED_EPOCHS epoch(s) with writes acknowledged by both"
echo "  state hashes              n1 $H1, n2 $H2"
finish
