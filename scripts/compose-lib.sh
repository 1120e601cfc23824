# Shared by scripts/compose-demo.sh (a pair) and scripts/compose-three.sh
# (three nodes): the Docker checks, the static build and the FROM-scratch
# image, the throwaway certificates and token, and the client helpers that
# read /health and write through the CLI. Source it after setting PROJECT,
# COMPOSE_FILE, IMAGE and NAMES (the node names, comma-separated); it
# exits 0, saying so, where no Docker engine or compose tool runs.

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "$(basename "$0"): no Docker engine on this machine; nothing to do."
  exit 0
fi
if command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  echo "$(basename "$0"): Docker is here but neither docker-compose nor 'docker compose'; nothing to do."
  exit 0
fi
compose() { WALREP_IMAGE=$IMAGE "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }

step() { printf '\n== %s\n' "$*"; }
now_ms() { date +%s%3N; }

START=$(date +%s)
CTX=$(mktemp -d)
SECRETS=

# On any exit: what the script adds (cleanup_extra, which it may
# redefine), then the containers, networks, volumes and temporary files.
cleanup_extra() { :; }
cleanup() {
  cleanup_extra
  step "cleaning up containers, networks and volumes"
  compose down -v --remove-orphans 2>&1 | sed 's/^/  /' || true
  rm -rf "$CTX" ${SECRETS:+"$SECRETS"}
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts the compose file's services afresh and waits for the witness.
compose_up() {
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  compose up -d 2>&1 | sed 's/^/  /'
  wait_until "witness healthy (Docker health check)" 60 container_healthy witness
}

# Builds a static walrep and the image; sets BIN.
build_image() {
  step "building a static walrep (release, +crt-static)"
  local target_dir=${CARGO_TARGET_DIR:-target}
  RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --quiet --release --target x86_64-unknown-linux-gnu --bin walrep
  BIN=$target_dir/x86_64-unknown-linux-gnu/release/walrep
  step "making a throwaway cluster CA, node, witness and HTTPS certificates and an HTTP token"
  # Outside the image's build context, which holds the binary only.
  SECRETS=$(mktemp -d)
  export WALREP_SECRETS=$SECRETS
  "$BIN" certs --dir "$SECRETS" --names "$NAMES" --witness --http-hosts 127.0.0.1,localhost | sed 's/^/  /'
  TOKEN_FILE=$SECRETS/token
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE"
  AUTH=(--http-token-file "$TOKEN_FILE")
  step "building image $IMAGE (FROM scratch, context: the binary only)"
  cp "$BIN" "$CTX/walrep"
  docker build --quiet -t "$IMAGE" -f deploy/Dockerfile "$CTX" | sed 's/^/  /'
  docker image ls "$IMAGE" --format '  {{.Repository}}:{{.Tag}} {{.Size}}'
  rm "$CTX/walrep"
}

# The client commands talk HTTPS, trusting the throwaway CA.
cli() { "$BIN" "$@" --tls-ca "$SECRETS/ca.pem"; }

field() { # field NAME ADDR: one field of /health
  cli status --json --addr "$2" 2>/dev/null |
    sed -n "s/^  \"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p"
}
wait_until() { # wait_until WHAT SECONDS COMMAND...
  local what=$1 limit=$2
  shift 2
  local deadline=$(($(date +%s) + limit))
  until "$@"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "$(basename "$0"): timed out waiting for $what" >&2
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
is_eligible() { [ "$(field eligible "$1")" = true ]; }
# The node's view of the arbiter: "witness://... reachable, register vV epoch E primary P sync set [...]".
arbiter_of() { cli status --addr "$1" 2>/dev/null | sed -n 's/^arbiter \{2,\}//p'; }
register_epoch() { arbiter_of "$1" | sed -n 's/.* register v[0-9]* epoch \([0-9]*\) .*/\1/p'; }
LAST_ERR=
put_once() { # put_once ADDR KEY FILE: one attempt; if acknowledged, appends "key value lsn epoch" to FILE
  local out lsn epoch
  if ! out=$(cli put "$2" "value-$2" --addr "$1" "${AUTH[@]}" 2>&1); then
    LAST_ERR=$out
    return 1
  fi
  read -r _ _ lsn _ epoch <<<"$out" # "ok: lsn N epoch E"
  echo "$2 value-$2 $lsn $epoch" >>"$3"
}
write_keys() { # write_keys ADDR PREFIX COUNT FILE
  local i
  for ((i = 0; i < $3; i++)); do
    until put_once "$1" "$2$i" "$4"; do sleep 0.05; done
  done
}
put_until() { # put_until WHAT SECONDS ADDR KEY FILE: put_once until acknowledged
  local deadline=$(($(date +%s) + $2))
  until put_once "$3" "$4" "$5"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "$(basename "$0"): timed out waiting for $1; last error: $LAST_ERR" >&2
      compose logs --tail=30 >&2 || true
      exit 1
    fi
    sleep 0.02
  done
}
lost_in() { # lost_in FILE ADDR: the writes of FILE that do not read back on ADDR
  local key value rest
  while read -r key value rest; do
    [ "$(cli get "$key" --addr "$2" 2>/dev/null || true)" = "$value" ] || echo "$key $value $rest"
  done <"$1"
}
count() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# The report's last lines: the wall time, then PASS, or FAIL with each
# entry of the FAIL array, and a non-zero exit.
finish() {
  echo "  wall time                 $(($(date +%s) - START)) s (build, image, run; the cleanup follows)"
  if [ ${#FAIL[@]} -eq 0 ]; then
    echo "RESULT: PASS"
  else
    printf '  FAILED: %s\n' "${FAIL[@]}"
    echo "RESULT: FAIL"
    exit 1
  fi
}
