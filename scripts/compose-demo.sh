#!/usr/bin/env bash
# The failover demo in Docker: builds a static walrep and a FROM-scratch
# image, starts n1 (primary) and n2 (standby) with deploy/docker-compose.yml,
# writes keys, kills the primary container, shows the failover, restarts it,
# shows the rejoin, checks that nothing acknowledged was lost, and removes
# the containers and volumes. On a machine without a Docker engine it says
# so and exits 0.
#
#   scripts/compose-demo.sh [KEYS]     (default 500 keys before the crash)
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${1:-500}
AFTER=$((KEYS / 5 + 1))
PROJECT=walrepdemo
IMAGE=walrep:local
N1=127.0.0.1:8001
N2=127.0.0.1:8002

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "compose-demo: no Docker engine on this machine; nothing to do."
  exit 0
fi
if command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  echo "compose-demo: Docker is here but neither docker-compose nor 'docker compose'; nothing to do."
  exit 0
fi
compose() { WALREP_IMAGE=$IMAGE "${COMPOSE[@]}" -p "$PROJECT" -f deploy/docker-compose.yml "$@"; }

step() { printf '\n== %s\n' "$*"; }
now_ms() { date +%s%3N; }

step "building a static walrep (release, +crt-static)"
TARGET_DIR=${CARGO_TARGET_DIR:-target}
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --quiet --release --target x86_64-unknown-linux-gnu --bin walrep
BIN=$TARGET_DIR/x86_64-unknown-linux-gnu/release/walrep
CTX=$(mktemp -d)
ACKED=$CTX/acked
cleanup() {
  step "cleaning up containers, network and volumes"
  compose down -v --remove-orphans 2>&1 | sed 's/^/  /' || true
  rm -rf "$CTX"
}
trap cleanup EXIT

step "building image $IMAGE (FROM scratch, context: the binary only)"
cp "$BIN" "$CTX/walrep"
docker build --quiet -t "$IMAGE" -f deploy/Dockerfile "$CTX" | sed 's/^/  /'
docker image ls "$IMAGE" --format '  {{.Repository}}:{{.Tag}} {{.Size}}'
rm "$CTX/walrep"

field() { # field NAME ADDR: one field of /health
  "$BIN" status --json --addr "$2" 2>/dev/null |
    sed -n "s/^  \"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p"
}
wait_until() { # wait_until WHAT SECONDS COMMAND...
  local what=$1 limit=$2
  shift 2
  local deadline=$(($(date +%s) + limit))
  until "$@"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "compose-demo: timed out waiting for $what" >&2
      compose ps >&2 || true
      compose logs --tail=30 >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}
is_writable_primary() { [ "$(field writable "$1")" = true ]; }
is_standby() { [ "$(field role "$1")" = standby ]; }
container_healthy() { [ "$(docker inspect --format '{{.State.Health.Status}}' "$(compose ps -q "$1")")" = healthy ]; }
write_keys() { # write_keys ADDR PREFIX COUNT
  local i
  for ((i = 0; i < $3; i++)); do
    until "$BIN" put "$2$i" "value-$2$i" --addr "$1" >/dev/null 2>&1; do sleep 0.05; done
    echo "$2$i value-$2$i" >>"$ACKED"
  done
}

step "starting n1 (primary) and n2 (standby)"
compose down -v --remove-orphans >/dev/null 2>&1 || true
compose up -d 2>&1 | sed 's/^/  /'
wait_until "n1 writable" 60 is_writable_primary $N1
wait_until "n2 standby" 60 is_standby $N2
wait_until "n1 healthy (Docker health check)" 60 container_healthy n1
wait_until "n2 healthy (Docker health check)" 60 container_healthy n2
compose ps | sed 's/^/  /'
"$BIN" status --addr $N1 | sed 's/^/  /'

step "writing $KEYS keys to n1"
write_keys $N1 k "$KEYS"
echo "  $(wc -l <"$ACKED") writes acknowledged; n1 last_lsn $(field last_lsn $N1), n2 applied_lsn $(field applied_lsn $N2)"

step "docker kill n1 (SIGKILL)"
KILLED=$(now_ms)
docker kill "$(compose ps -q n1)" >/dev/null
until "$BIN" put failover-probe first-after-kill --addr $N2 >/dev/null 2>&1; do sleep 0.02; done
FAILOVER_MS=$(($(now_ms) - KILLED))
echo "failover-probe first-after-kill" >>"$ACKED"
echo "  n2 acknowledged its first write ${FAILOVER_MS} ms after the kill"
"$BIN" status --addr $N2 | sed 's/^/  /'

step "writing $AFTER keys to n2"
write_keys $N2 a "$AFTER"

step "docker start n1 (same settings: WALREP_ROLE=primary, but its data says epoch 1)"
docker start "$(compose ps -q n1)" >/dev/null
TARGET=$(field last_lsn $N2)
caught_up() { is_standby $N1 && [ "$(field applied_lsn $N1)" -ge "$TARGET" ] 2>/dev/null; }
wait_until "n1 rejoined and caught up to LSN $TARGET" 60 caught_up
"$BIN" status --addr $N1 | sed 's/^/  /'

step "checking every acknowledged write on n2"
LOST=0
while read -r key value; do
  got=$("$BIN" get "$key" --addr $N2 2>/dev/null || true)
  [ "$got" = "$value" ] || LOST=$((LOST + 1))
done <"$ACKED"
H1=$(field state_hash $N1)
H2=$(field state_hash $N2)

step "report"
echo "  writes acknowledged       $(wc -l <"$ACKED")"
echo "  failover time             ${FAILOVER_MS} ms (docker kill n1 -> first acknowledged write on n2)"
echo "  acknowledged writes lost  $LOST"
echo "  n1 now                    $(field role $N1), epoch $(field epoch $N1)"
echo "  state hashes              n1 $H1, n2 $H2"
if [ "$LOST" -eq 0 ] && [ "$H1" = "$H2" ]; then
  echo "RESULT: PASS"
else
  echo "RESULT: FAIL"
  exit 1
fi
