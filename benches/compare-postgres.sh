#!/usr/bin/env bash
# compare-postgres.sh: walrep next to PostgreSQL 15 streaming replication, same machine, same disk.
#
# In one run this script:
#   1. sets up a PostgreSQL 15 primary and a synchronous standby (pg_basebackup -R, a physical
#      replication slot, synchronous_standby_names, synchronous_commit = on) on loopback, on free
#      ports, in a temporary directory; everything is stopped and removed on exit;
#   2. runs pgbench with a single-row INSERT of a 100-byte value for 1, 16 and 64 clients and
#      computes TPS and p50/p99/p99.9 commit latency from pgbench's per-transaction logs;
#   3. stops the standby, writes a WAL backlog of BACKLOG_MB on the primary, starts the standby
#      again and times how long it takes to receive (flush) and to replay up to the primary's LSN;
#   4. stops the primary and times `pg_ctl promote` on the standby until its first successful INSERT;
#   5. asks the walrep binary for the same numbers (`walrep bench-pair`, `bench-catchup`,
#      `bench-failover`, each with --json); a missing subcommand or binary gives "n/a";
#   6. prints one markdown table (PostgreSQL, walrep, walrep/PostgreSQL) with the machine in a
#      header, and writes it to benches/results/compare-<date>.md;
#   2b. with ANY1_CLIENTS, adds a second synchronous standby, sets synchronous_standby_names to
#      'ANY 1 (standby1, standby2)' and runs pgbench again for those client counts, then takes the
#      second standby away; walrep runs `bench-pair --nodes 3 --sync-standbys 'ANY 1 (n1, n2, n3)'`;
#   7. prints pg_test_fsync's 8 kB fdatasync line as a reference for the disk, and the loopback
#      round trip between two processes (benches/loopback-rtt.c, built with cc) beside it;
#   8. judges the run against the project's performance targets, in a last table.
#
# Usage:
#   benches/compare-postgres.sh                       # full run (~3 x 20 s of pgbench + 1 GiB catch-up)
#   DURATION=5 BACKLOG_MB=64 benches/compare-postgres.sh   # short trial
#
# Environment:
#   DURATION=20            seconds of load for each client count (PostgreSQL and walrep)
#   WARMUP_SECONDS=2       unmeasured load before each measured run, on both sides (pgbench runs
#                          with -M prepared and as many threads as walrep's load generator, one
#                          per CPU; walrep's nodes keep their data under the same temp dir)
#   CLIENTS="1 16 64"      client counts
#   BACKLOG_MB=1024        WAL backlog for the catch-up measurement, MiB
#   CATCHUP_TIMEOUT=600    longest wait for the standby to catch up, seconds
#   PROMOTE_TIMEOUT=60     longest wait for the promoted standby to take an INSERT, seconds
#   VALUE_BYTES=100        size of the value written by each transaction
#   FAILOVER_TRIALS=20     walrep bench-failover --trials (each setting below)
#   HEARTBEAT_MS=200       walrep bench-failover --heartbeat-ms (walrep's default)
#   FAILOVER_TIMEOUT_MS=1000  walrep bench-failover --failover-timeout-ms (walrep's default)
#   AGGR_HEARTBEAT_MS=50 AGGR_FAILOVER_TIMEOUT_MS=250  the aggressive setting, measured too
#   LOAD_SECONDS=10        walrep bench-failover --load-seconds (false failovers under load)
#   SWITCHOVER_TRIALS=10   walrep bench-switchover --trials
#   ANY1_CLIENTS="1 16"    client counts for the two-standby ANY 1 comparison ("" to skip it)
#   FSYNC_TEST=1           run `pg_test_fsync -s 2` for the reference line (0 to skip, saves ~30 s)
#   PG_BIN=...             directory holding PostgreSQL 15's initdb, pg_ctl, postgres, psql,
#                          pg_basebackup, pgbench (default: found under /usr/lib/postgresql/15/bin,
#                          installed with apt-get if missing and running as root)
#   PG_USER=postgres       OS user the servers run as when this script runs as root (PostgreSQL
#                          refuses to run as root); created (and removed again) if it does not exist
#   PG_SHARED_BUFFERS=256MB  shared_buffers of both servers
#   WORK_BASE=${TMPDIR:-/tmp}  where the temporary directory goes (it must be reachable by PG_USER;
#                          it is on the same disk for both systems)
#   WALREP_BIN=...         walrep binary; default: build with `cargo build --release` and use
#                          ${CARGO_TARGET_DIR:-target}/release/walrep
#   WALREP_BUILD=1         0: do not build walrep when WALREP_BIN is not set and no binary exists
#   RESULTS_DIR=benches/results  where compare-<date>.md is written
#
# Needs: bash, awk, sort, sed, ss or /dev/tcp; runuser (or su) when run as root; cc for the
# round-trip reference (n/a without it).
set -euo pipefail

DURATION=${DURATION:-20}
WARMUP_SECONDS=${WARMUP_SECONDS:-2}
CLIENTS=${CLIENTS:-"1 16 64"}
BACKLOG_MB=${BACKLOG_MB:-1024}
CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-600}
PROMOTE_TIMEOUT=${PROMOTE_TIMEOUT:-60}
VALUE_BYTES=${VALUE_BYTES:-100}
FAILOVER_TRIALS=${FAILOVER_TRIALS:-20}
AGGR_HEARTBEAT_MS=${AGGR_HEARTBEAT_MS:-50}
AGGR_FAILOVER_TIMEOUT_MS=${AGGR_FAILOVER_TIMEOUT_MS:-250}
LOAD_SECONDS=${LOAD_SECONDS:-10}
SWITCHOVER_TRIALS=${SWITCHOVER_TRIALS:-10}
ANY1_CLIENTS=${ANY1_CLIENTS-"1 16"}
HEARTBEAT_MS=${HEARTBEAT_MS:-200}
FAILOVER_TIMEOUT_MS=${FAILOVER_TIMEOUT_MS:-1000}
FSYNC_TEST=${FSYNC_TEST:-1}
PG_USER=${PG_USER:-postgres}
PG_SHARED_BUFFERS=${PG_SHARED_BUFFERS:-256MB}
WORK_BASE=${WORK_BASE:-${TMPDIR:-/tmp}}
WALREP_BUILD=${WALREP_BUILD:-1}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
RESULTS_DIR=${RESULTS_DIR:-$REPO_DIR/benches/results}

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
# fsub A B: A - B with 3 decimals.
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }

# ---------------------------------------------------------------------------------------------
# Cleanup: both servers stopped, the temporary directory removed, a user we created removed.
WORK=""
CREATED_USER=""
PRIMARY_DATA=""
STANDBY_DATA=""
STANDBY2_DATA=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local d pid
  for d in "$STANDBY2_DATA" "$STANDBY_DATA" "$PRIMARY_DATA"; do
    [[ -n "$d" && -f "$d/postmaster.pid" ]] || continue
    as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate -w -t 20 stop >/dev/null 2>&1 || true
    if [[ -f "$d/postmaster.pid" ]]; then
      pid=$(head -n 1 "$d/postmaster.pid" 2>/dev/null || true)
      if [[ -n "$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
  done
  [[ -n "$WORK" && -d "$WORK" ]] && rm -rf -- "$WORK"
  if [[ -n "$CREATED_USER" ]]; then
    userdel "$CREATED_USER" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# PostgreSQL 15 binaries.
pg_bin_ok() {
  local d=$1 t
  for t in initdb pg_ctl postgres psql pg_basebackup pgbench; do
    [[ -x "$d/$t" ]] || return 1
  done
  "$d/postgres" --version 2>/dev/null | grep -q ' 15\.'
}
find_pg_bin() {
  local d
  for d in "${PG_BIN:-}" /usr/lib/postgresql/15/bin /usr/pgsql-15/bin /usr/local/pgsql/bin; do
    [[ -n "$d" ]] && pg_bin_ok "$d" && { echo "$d"; return 0; }
  done
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null || true)
    [[ -n "$d" ]] && pg_bin_ok "$d" && { echo "$d"; return 0; }
  fi
  return 1
}
if ! PG_BIN=$(find_pg_bin); then
  [[ $EUID -eq 0 ]] || die "PostgreSQL 15 binaries not found (set PG_BIN or install Debian's postgresql package)"
  log "PostgreSQL 15 binaries not found: installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >&2 && apt-get install -y postgresql >&2
  PG_BIN=$(find_pg_bin) || die "PostgreSQL 15 binaries still not found after apt-get install postgresql"
fi
log "PostgreSQL binaries: $PG_BIN ($("$PG_BIN/postgres" --version))"

# PostgreSQL refuses to run as root: run the servers (and the tools that write into their data
# directories) as PG_USER.
if [[ $EUID -eq 0 ]]; then
  if ! id -u "$PG_USER" >/dev/null 2>&1; then
    log "creating system user $PG_USER to run PostgreSQL (removed on exit)"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
    CREATED_USER=$PG_USER
  fi
  if command -v runuser >/dev/null 2>&1; then
    as_pg() { runuser -u "$PG_USER" -- "$@"; }
  else
    as_pg() { su -s /bin/sh "$PG_USER" -c "$(printf '%q ' "$@")"; }
  fi
else
  as_pg() { "$@"; }
fi

# ---------------------------------------------------------------------------------------------
# Free loopback ports: a random one that nothing listens on (postgres fails loudly if we lose a race).
port_in_use() {
  if command -v ss >/dev/null 2>&1; then
    ss -Htln "sport = :$1" 2>/dev/null | grep -q .
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
USED_PORTS=" "
free_port() {
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + (RANDOM * 32768 + RANDOM + i) % 40000))
    [[ "$USED_PORTS" == *" $p "* ]] && continue
    port_in_use "$p" && continue
    USED_PORTS="$USED_PORTS$p "
    echo "$p"
    return 0
  done
  die "no free port found"
}

WORK=$(mktemp -d "$WORK_BASE/walrep-compare.XXXXXX")
chmod 755 "$WORK"
mkdir -p "$WORK/logs"
[[ $EUID -eq 0 ]] && chown "$PG_USER" "$WORK" "$WORK/logs"
PRIMARY_PORT=$(free_port)
STANDBY_PORT=$(free_port)
log "work dir $WORK, primary port $PRIMARY_PORT, standby port $STANDBY_PORT"

# psql against one server: -X (no psqlrc), tuples only, stop on error.
psql_at() {
  local port=$1
  shift
  "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"
}

# ---------------------------------------------------------------------------------------------
# Machine header (before anything is loaded).
DATE=$(date +%Y-%m-%d)
STAMP=$(date +%Y-%m-%d-%H%M%S)
NPROC=$(nproc)
MEM=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
KERNEL=$(uname -sr)
DISK=$(df -hT "$WORK" | awk 'NR == 2 { printf "%s (%s), %s total, %s free", $1, $2, $3, $5 }')
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)

# ---------------------------------------------------------------------------------------------
# 7. Disk reference: pg_test_fsync's one-8kB-write fdatasync line.
FSYNC_LINE="n/a"
if [[ "$FSYNC_TEST" != 0 && -x "$PG_BIN/pg_test_fsync" ]]; then
  log "pg_test_fsync -s 2 (disk reference, ~30 s)"
  if as_pg "$PG_BIN/pg_test_fsync" -s 2 -f "$WORK/pg_test_fsync.out" >"$WORK/logs/pg_test_fsync.txt" 2>&1; then
    FSYNC_LINE=$(awk '/using one 8kB write/ { s = 1; next } s && $1 == "fdatasync" { gsub(/^[ \t]+|[ \t]+$/, ""); gsub(/[ \t]+/, " "); print; exit }' \
      "$WORK/logs/pg_test_fsync.txt")
    [[ -n "$FSYNC_LINE" ]] || FSYNC_LINE="n/a"
  else
    log "pg_test_fsync failed: $(tail -n 3 "$WORK/logs/pg_test_fsync.txt" | tr '\n' ' ')"
  fi
  rm -f "$WORK/pg_test_fsync.out"
  log "pg_test_fsync: $FSYNC_LINE"
fi
FSYNC_US=$(awk '{ for (i = 2; i <= NF; i++) if ($i == "usecs/op") { print $(i - 1); exit } }' <<<"$FSYNC_LINE")
[[ -n "$FSYNC_US" ]] || FSYNC_US="n/a"

# ---------------------------------------------------------------------------------------------
# 8. Round-trip reference: 100 bytes between two processes over loopback TCP (loopback-rtt.c).
# One fdatasync plus one such round trip is what a synchronous commit cannot go below.
RTT_P50="n/a" RTT_P99="n/a"
if ! command -v cc >/dev/null 2>&1; then
  log "no C compiler (cc): the loopback round-trip reference is n/a"
elif cc -O2 -o "$WORK/loopback-rtt" "$SCRIPT_DIR/loopback-rtt.c" 2>"$WORK/logs/loopback-rtt-cc.txt"; then
  read -r RTT_P50 RTT_P99 < <("$WORK/loopback-rtt" 20000 || echo "n/a n/a")
  log "loopback round trip between two processes: p50 $RTT_P50 us, p99 $RTT_P99 us"
else
  log "building loopback-rtt failed: $(tail -n 3 "$WORK/logs/loopback-rtt-cc.txt" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------------------------------------
# 1. Primary and synchronous standby.
PRIMARY_DATA=$WORK/primary
STANDBY_DATA=$WORK/standby
log "initdb primary"
as_pg "$PG_BIN/initdb" -D "$PRIMARY_DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale \
  >"$WORK/logs/initdb.log" 2>&1 || { cat "$WORK/logs/initdb.log" >&2; die "initdb failed"; }
# Appending as root keeps the file's owner.
cat >>"$PRIMARY_DATA/postgresql.conf" <<EOF

# --- compare-postgres.sh ---
listen_addresses = '127.0.0.1'
port = $PRIMARY_PORT
unix_socket_directories = '$WORK'
max_connections = 120
shared_buffers = $PG_SHARED_BUFFERS
wal_level = replica
max_wal_senders = 4
max_replication_slots = 4
max_wal_size = 4GB
fsync = on
synchronous_commit = on
synchronous_standby_names = 'FIRST 1 (standby1)'
hot_standby = on
logging_collector = off
EOF
grep -q '^host[[:space:]]\+replication[[:space:]]\+all[[:space:]]\+127.0.0.1/32' "$PRIMARY_DATA/pg_hba.conf" ||
  echo "host replication all 127.0.0.1/32 trust" >>"$PRIMARY_DATA/pg_hba.conf"

pg_start() { # data-dir log-name
  as_pg "$PG_BIN/pg_ctl" -D "$1" -l "$WORK/logs/$2.log" -w -t 60 start >/dev/null ||
    { tail -n 30 "$WORK/logs/$2.log" >&2; die "$2 did not start"; }
}
log "starting primary"
pg_start "$PRIMARY_DATA" primary

log "pg_basebackup -R for the standby"
as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -D "$STANDBY_DATA" \
  -R -X stream -C -S standby1 -c fast >"$WORK/logs/basebackup.log" 2>&1 ||
  { cat "$WORK/logs/basebackup.log" >&2; die "pg_basebackup failed"; }
# The standby inherited the primary's postgresql.conf: later lines override it. cluster_name is
# the application_name its walreceiver reports; no synchronous standby of its own (after
# promotion its commits would otherwise wait for nobody).
cat >>"$STANDBY_DATA/postgresql.conf" <<EOF

# --- compare-postgres.sh: standby ---
port = $STANDBY_PORT
cluster_name = 'standby1'
synchronous_standby_names = ''
EOF
log "starting standby"
pg_start "$STANDBY_DATA" standby

wait_sync() {
  local i state
  for i in $(seq 1 200); do
    state=$(psql_at "$PRIMARY_PORT" -c "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'" || true)
    [[ "$state" == sync ]] && return 0
    sleep 0.1
  done
  die "standby did not become the synchronous standby (sync_state '${state:-none}')"
}
wait_sync
log "standby1 is the synchronous standby"

psql_at "$PRIMARY_PORT" -c "CREATE TABLE kv (id bigserial PRIMARY KEY, v text)"
printf "INSERT INTO kv (v) VALUES (repeat('x', %d));\n" "$VALUE_BYTES" >"$WORK/insert.sql"

# ---------------------------------------------------------------------------------------------
# 2. pgbench: single-row INSERT, per-transaction latency log.
# percentiles FILE: "p50 p99 p999" in ms from a file of latencies in microseconds (nearest rank).
percentiles() {
  sort -n "$1" | awk '
    { v[NR] = $1 }
    END {
      if (NR == 0) { print "n/a n/a n/a"; exit }
      split("0.5 0.99 0.999", q, " ")
      for (i = 1; i <= 3; i++) {
        r = int(q[i] * NR); if (r < q[i] * NR) r++; if (r < 1) r = 1
        printf "%s%.3f", (i > 1 ? " " : ""), v[r] / 1000
      }
      printf "\n"
    }'
}
declare -A PG WR
# pg_bench KEY CLIENTS: pgbench against the primary, into PG[tps_KEY], PG[p50_KEY]...
pg_bench() {
  local key=$1 c=$2 j dir p50 p99 p999 tps
  # As many client threads as walrep's load generator gets (one runtime
  # worker per CPU), and the extended protocol with prepared statements,
  # as a real application would use.
  j=$((c < NPROC ? c : NPROC))
  dir=$WORK/pgbench-$key
  mkdir -p "$dir"
  # Unmeasured warm-up, as bench-pair's: backends started, caches warm.
  "$PG_BIN/pgbench" -n -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -c "$c" -j "$j" -M prepared \
    -T "$WARMUP_SECONDS" -f "$WORK/insert.sql" postgres >"$dir/warmup.txt" 2>&1 ||
    { cat "$dir/warmup.txt" >&2; die "pgbench warm-up failed for $c clients"; }
  log "pgbench: $c client(s), $j thread(s), ${DURATION}s (after ${WARMUP_SECONDS}s of warm-up)"
  (cd "$dir" && "$PG_BIN/pgbench" -n -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -c "$c" -j "$j" \
    -M prepared -T "$DURATION" -f "$WORK/insert.sql" -l --log-prefix="$dir/lat" postgres) >"$dir/out.txt" 2>&1 ||
    { cat "$dir/out.txt" >&2; die "pgbench failed for $c clients"; }
  # Log line: client_id transaction_no latency_us script_no epoch_s epoch_us
  cat "$dir"/lat.* | awk '{ print $3 }' >"$dir/lat_us.txt"
  read -r p50 p99 p999 < <(percentiles "$dir/lat_us.txt")
  tps=$(awk '/^tps = / { print $3; exit }' "$dir/out.txt")
  [[ -n "$tps" ]] || tps=$(awk -v n="$(wc -l <"$dir/lat_us.txt")" -v d="$DURATION" 'BEGIN { printf "%.1f", n / d }')
  PG[tps_$key]=$(printf '%.1f' "$tps")
  PG[p50_$key]=$p50
  PG[p99_$key]=$p99
  PG[p999_$key]=$p999
  log "  PostgreSQL $key: tps ${PG[tps_$key]}, p50 $p50 ms, p99 $p99 ms, p99.9 $p999 ms ($(wc -l <"$dir/lat_us.txt") txns)"
  rm -f "$dir"/lat.*
}
for c in $CLIENTS; do pg_bench "$c" "$c"; done

# ---------------------------------------------------------------------------------------------
# 2b. Two synchronous standbys under ANY 1: a second standby from a base backup, the primary's
# synchronous_standby_names switched to a quorum of one, pgbench again; then the second standby
# and its slot go away, and the primary waits for standby1 alone again.
if [[ -n "$ANY1_CLIENTS" ]]; then
  STANDBY2_PORT=$(free_port)
  STANDBY2_DATA=$WORK/standby2
  log "ANY 1: pg_basebackup -R for standby2 (port $STANDBY2_PORT)"
  as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -D "$STANDBY2_DATA" \
    -R -X stream -C -S standby2 -c fast >"$WORK/logs/basebackup2.log" 2>&1 ||
    { cat "$WORK/logs/basebackup2.log" >&2; die "pg_basebackup of standby2 failed"; }
  printf '\n# --- compare-postgres.sh: standby2 ---\nport = %s\ncluster_name = '"'"'standby2'"'"'\nsynchronous_standby_names = '"''"'\n' \
    "$STANDBY2_PORT" >>"$STANDBY2_DATA/postgresql.conf"
  pg_start "$STANDBY2_DATA" standby2
  psql_at "$PRIMARY_PORT" -c "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (standby1, standby2)'" \
    -c "SELECT pg_reload_conf()" >/dev/null
  quorum=0
  for i in $(seq 1 200); do
    quorum=$(psql_at "$PRIMARY_PORT" -c "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'" || true)
    [[ "$quorum" == 2 ]] && break
    sleep 0.1
  done
  [[ "$quorum" == 2 ]] || die "the two standbys did not become a synchronous quorum (${quorum:-0} of 2)"
  log "ANY 1: standby1 and standby2 form the synchronous quorum"
  for c in $ANY1_CLIENTS; do pg_bench "any1_$c" "$c"; done
  as_pg "$PG_BIN/pg_ctl" -D "$STANDBY2_DATA" -m fast -w stop >/dev/null
  psql_at "$PRIMARY_PORT" -c "ALTER SYSTEM RESET synchronous_standby_names" -c "SELECT pg_reload_conf()" \
    -c "SELECT pg_drop_replication_slot('standby2')" >/dev/null
  wait_sync
fi

# ---------------------------------------------------------------------------------------------
# 3. Catch-up: a WAL backlog written while the standby is down, then timed until received and
# replayed. The slot keeps the backlog on the primary.
# (The table is created while the standby is still up: a synchronous commit would wait for it.)
psql_at "$PRIMARY_PORT" -c "CREATE TABLE bulk (id bigint, v text)"
log "catch-up: stopping the standby"
as_pg "$PG_BIN/pg_ctl" -D "$STANDBY_DATA" -m fast -w stop >/dev/null
START_LSN=$(psql_at "$PRIMARY_PORT" -c "SELECT pg_current_wal_lsn()")
BACKLOG_BYTES=$((BACKLOG_MB * 1024 * 1024))
log "catch-up: writing ${BACKLOG_MB} MiB of WAL from $START_LSN"
gen_start=$(now)
written=0
while ((written < BACKLOG_BYTES)); do
  # ~32 MiB of WAL per statement (rows of ~1 kB), fewer near the end. Commits wait for no
  # standby here: the standby is down on purpose.
  left=$((BACKLOG_BYTES - written))
  rows=$(((left < 33554432 ? left : 33554432) / 1100 + 1))
  written=$(psql_at "$PRIMARY_PORT" -c "SET synchronous_commit = local" \
    -c "INSERT INTO bulk SELECT g, repeat(md5(g::text), 31) FROM generate_series(1, $rows) g" \
    -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$START_LSN')::bigint")
done
TARGET_LSN=$(psql_at "$PRIMARY_PORT" -c "SELECT pg_current_wal_lsn()")
BACKLOG_REAL=$(psql_at "$PRIMARY_PORT" -c "SELECT pg_wal_lsn_diff('$TARGET_LSN', '$START_LSN')::bigint")
BACKLOG_REAL_MB=$(awk -v b="$BACKLOG_REAL" 'BEGIN { printf "%.1f", b / 1048576 }')
log "catch-up: backlog ${BACKLOG_REAL_MB} MiB of WAL up to $TARGET_LSN (written in $(fsub "$(now)" "$gen_start") s)"
sync  # the backlog's dirty pages are not the standby's to pay for

log "catch-up: starting the standby"
t0=$(now)
as_pg "$PG_BIN/pg_ctl" -D "$STANDBY_DATA" -l "$WORK/logs/standby.log" -W start >/dev/null
t_up="" t_recv="" t_replay=""
deadline=$(awk -v t="$t0" -v d="$CATCHUP_TIMEOUT" 'BEGIN { printf "%.0f", t + d }')
while [[ -z "$t_replay" ]]; do
  (($(date +%s) < deadline)) || { log "catch-up: no catch-up within ${CATCHUP_TIMEOUT}s"; break; }
  row=$(psql_at "$STANDBY_PORT" -c "SELECT coalesce(pg_last_wal_receive_lsn() >= '$TARGET_LSN', false),
    coalesce(pg_last_wal_replay_lsn() >= '$TARGET_LSN', false)" 2>/dev/null || true)
  t=$(now)
  if [[ -z "$t_up" && -n "$row" ]]; then t_up=$t; fi
  if [[ -z "$t_recv" && "$row" == t\|* ]]; then t_recv=$t; fi
  if [[ "$row" == *\|t ]]; then
    t_replay=$t
    [[ -n "$t_recv" ]] || t_recv=$t
  fi
  [[ -n "$t_replay" ]] || sleep 0.02
done
mb_s() { awk -v b="$BACKLOG_REAL" -v s="$1" 'BEGIN { if (s <= 0) s = 0.001; printf "%.1f", b / 1048576 / s }'; }
PG[recv_mb_s]="n/a" PG[apply_mb_s]="n/a" PG[up_s]="n/a"
if [[ -n "$t_up" ]]; then
  PG[up_s]=$(fsub "$t_up" "$t0")
  log "catch-up: standby answered queries after ${PG[up_s]}s"
fi
if [[ -n "$t_recv" ]]; then
  recv_s=$(fsub "$t_recv" "$t0")
  PG[recv_mb_s]=$(mb_s "$recv_s")
  log "catch-up: received (flushed) after ${recv_s}s: ${PG[recv_mb_s]} MB/s"
fi
if [[ -n "$t_replay" ]]; then
  replay_s=$(fsub "$t_replay" "$t0")
  PG[apply_mb_s]=$(mb_s "$replay_s")
  log "catch-up: replayed after ${replay_s}s: ${PG[apply_mb_s]} MB/s"
fi

# ---------------------------------------------------------------------------------------------
# 4. Promotion: the primary goes away, `pg_ctl promote`, then INSERTs until the first succeeds.
PG[promote_s]="n/a"
if [[ -n "$t_replay" ]]; then
  log "promotion: stopping the primary (immediate), promoting the standby"
  as_pg "$PG_BIN/pg_ctl" -D "$PRIMARY_DATA" -m immediate -w stop >/dev/null
  t0=$(now)
  as_pg "$PG_BIN/pg_ctl" -D "$STANDBY_DATA" -W promote >/dev/null
  deadline=$(awk -v t="$t0" -v d="$PROMOTE_TIMEOUT" 'BEGIN { printf "%.0f", t + d }')
  while (($(date +%s) < deadline)); do
    if psql_at "$STANDBY_PORT" -c "INSERT INTO kv (v) VALUES (repeat('y', $VALUE_BYTES))" >/dev/null 2>&1; then
      PG[promote_s]=$(fsub "$(now)" "$t0")
      break
    fi
    sleep 0.005
  done
  log "promotion: first INSERT on the promoted standby after ${PG[promote_s]} s"
fi

# Both servers stop before walrep runs, so they take no CPU or disk from it.
for d in "$STANDBY_DATA" "$PRIMARY_DATA"; do
  if [[ -f "$d/postmaster.pid" ]]; then as_pg "$PG_BIN/pg_ctl" -D "$d" -m fast -w stop >/dev/null 2>&1 || true; fi
done

# ---------------------------------------------------------------------------------------------
# 5. walrep: its own load generator, against its own pair.
WALREP=""
if [[ -n "${WALREP_BIN:-}" ]]; then
  if [[ -x "$WALREP_BIN" ]]; then WALREP=$WALREP_BIN; else log "WALREP_BIN=$WALREP_BIN is not executable"; fi
else
  target_dir=${CARGO_TARGET_DIR:-target}
  [[ "$target_dir" == /* ]] || target_dir=$REPO_DIR/$target_dir
  cand=$target_dir/release/walrep
  # A tree without a walrep binary target has nothing to build (a release build costs minutes).
  has_bin=0
  if [[ -f "$REPO_DIR/walrep-daemon/src/main.rs" || -f "$REPO_DIR/src/main.rs" ]] ||
    grep -q '^\[\[bin\]\]' "$REPO_DIR/Cargo.toml" 2>/dev/null; then
    has_bin=1
  fi
  if [[ ! -x "$cand" && "$WALREP_BUILD" != 0 && "$has_bin" == 1 ]] && command -v cargo >/dev/null 2>&1; then
    log "building walrep (cargo build --release)"
    (cd "$REPO_DIR" && cargo build --release --bin walrep) >"$WORK/logs/cargo-build.log" 2>&1 ||
      log "cargo build --release failed (see the tail below)"
    tail -n 3 "$WORK/logs/cargo-build.log" >&2 || true
  fi
  if [[ -x "$cand" ]]; then WALREP=$cand; else log "no walrep binary at $cand"; fi
fi

# json_num JSON KEY: the number after "KEY": in a flat JSON object, or n/a.
json_num() {
  local v
  v=$(printf '%s' "$1" | sed -n "s/.*\"$2\"[[:space:]]*:[[:space:]]*\(-\{0,1\}[0-9][0-9.eE+-]*\).*/\1/p" | head -n 1)
  echo "${v:-n/a}"
}
# walrep_json NAME ARGS...: the last JSON object line of a walrep subcommand's stdout, or "".
walrep_json() {
  local name=$1
  shift
  [[ -n "$WALREP" ]] || return 0
  # The nodes' data directories under $WORK, on PostgreSQL's disk.
  if TMPDIR="$WORK" "$WALREP" "$@" >"$WORK/logs/walrep-$name.out" 2>"$WORK/logs/walrep-$name.err"; then
    grep '^[[:space:]]*{' "$WORK/logs/walrep-$name.out" | tail -n 1 || true
  else
    log "walrep $1 failed or is missing: $(tail -n 2 "$WORK/logs/walrep-$name.err" | tr '\n' ' ')"
  fi
}
# walrep_pair KEY CLIENTS [ARGS...]: bench-pair (remote-flush) into WR[tps_KEY], WR[p50_KEY]...
walrep_pair() {
  local key=$1 c=$2 js
  shift 2
  WR[tps_$key]="n/a" WR[p50_$key]="n/a" WR[p99_$key]="n/a" WR[p999_$key]="n/a"
  [[ -n "$WALREP" ]] || return 0
  log "walrep bench-pair $*: $c client(s), ${DURATION}s"
  js=$(walrep_json "pair-$key" bench-pair --mode remote-flush --clients "$c" --seconds "$DURATION" \
    --warmup-seconds "$WARMUP_SECONDS" --value-bytes "$VALUE_BYTES" --json "$@")
  [[ -n "$js" ]] || return 0
  WR[tps_$key]=$(json_num "$js" tps)
  WR[p50_$key]=$(json_num "$js" p50_ms)
  WR[p99_$key]=$(json_num "$js" p99_ms)
  WR[p999_$key]=$(json_num "$js" p999_ms)
  WR[errors_$key]=$(json_num "$js" errors)
  # Failed writes are not in walrep's latencies or TPS (a pgbench error
  # ends its run instead): such a row is not comparable.
  if [[ "${WR[errors_$key]}" != 0 && "${WR[errors_$key]}" != "n/a" ]]; then
    log "walrep bench-pair $c client(s): ${WR[errors_$key]} failed writes; its row is marked n/a"
    WR[tps_$key]="n/a" WR[p50_$key]="n/a" WR[p99_$key]="n/a" WR[p999_$key]="n/a"
  fi
}
for c in $CLIENTS; do walrep_pair "$c" "$c"; done
for c in $ANY1_CLIENTS; do walrep_pair "any1_$c" "$c" --nodes 3 --sync-standbys 'ANY 1 (n1, n2, n3)'; done
WR[recv_mb_s]="n/a" WR[apply_mb_s]="n/a" WR[primary_rss_mb]="n/a" WR[standby_rss_mb]="n/a"
if [[ -n "$WALREP" ]]; then
  log "walrep bench-catchup: ${BACKLOG_MB} MiB"
  js=$(walrep_json catchup bench-catchup --backlog-mb "$BACKLOG_MB" --json)
  if [[ -n "$js" ]]; then
    WR[recv_mb_s]=$(json_num "$js" receive_mb_s)
    WR[apply_mb_s]=$(json_num "$js" apply_mb_s)
    WR[primary_rss_mb]=$(json_num "$js" primary_rss_mb)
    WR[standby_rss_mb]=$(json_num "$js" standby_rss_mb)
  fi
fi
# walrep_failover KEY HEARTBEAT_MS TIMEOUT_MS: bench-failover at one setting, into WR[KEY_*].
walrep_failover() {
  local key=$1 js
  WR[${key}_p50_s]="n/a" WR[${key}_p99_s]="n/a" WR[${key}_false]="n/a" WR[${key}_lost]="n/a"
  [[ -n "$WALREP" ]] || return 0
  log "walrep bench-failover: $FAILOVER_TRIALS trials at $2 ms / $3 ms"
  js=$(walrep_json "failover-$key" bench-failover --trials "$FAILOVER_TRIALS" --heartbeat-ms "$2" \
    --failover-timeout-ms "$3" --load-seconds "$LOAD_SECONDS" --json)
  [[ -n "$js" ]] || return 0
  WR[${key}_p50_s]=$(json_num "$js" p50_s)
  WR[${key}_p99_s]=$(json_num "$js" p99_s)
  WR[${key}_false]=$(json_num "$js" false_failovers)
  WR[${key}_lost]=$(json_num "$js" lost)
}
walrep_failover failover "$HEARTBEAT_MS" "$FAILOVER_TIMEOUT_MS"
walrep_failover aggr "$AGGR_HEARTBEAT_MS" "$AGGR_FAILOVER_TIMEOUT_MS"
WR[pause_p50_ms]="n/a" WR[pause_max_ms]="n/a" WR[switch_lost]="n/a"
if [[ -n "$WALREP" ]]; then
  log "walrep bench-switchover: $SWITCHOVER_TRIALS trials"
  js=$(walrep_json switchover bench-switchover --trials "$SWITCHOVER_TRIALS" --json)
  if [[ -n "$js" ]]; then
    WR[pause_p50_ms]=$(json_num "$js" pause_p50_ms)
    WR[pause_max_ms]=$(json_num "$js" pause_max_ms)
    WR[switch_lost]=$(json_num "$js" lost)
  fi
fi

# ---------------------------------------------------------------------------------------------
# 6. The table.
ratio() {
  awk -v w="$1" -v p="$2" 'BEGIN {
    if (w == "n/a" || p == "n/a" || w !~ /^-?[0-9.eE+-]+$/ || p !~ /^-?[0-9.eE+-]+$/ || p + 0 == 0) { print "n/a"; exit }
    printf "%.2f", w / p }'
}
row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$(ratio "$3" "$2")"; }
# exact_ratio W P: as `ratio`, unrounded, for judging targets (0.504 is
# not within 0.5 just because it prints as 0.50).
exact_ratio() {
  awk -v w="$1" -v p="$2" 'BEGIN {
    if (w == "n/a" || p == "n/a" || w !~ /^-?[0-9.eE+-]+$/ || p !~ /^-?[0-9.eE+-]+$/ || p + 0 == 0) { print "n/a"; exit }
    printf "%.6f", w / p }'
}
# verdict VALUE OP LIMIT: yes, no, or n/a when either is not a number.
verdict() {
  awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
    if (v !~ /^-?[0-9.eE+-]+$/ || l !~ /^-?[0-9.eE+-]+$/) { print "n/a"; exit }
    if (op == "<=") ok = v + 0 <= l + 0; else if (op == "<") ok = v + 0 < l + 0; else ok = v + 0 >= l + 0
    print (ok ? "yes" : "no") }'
}
# target NAME SHOWN VALUE OP LIMIT: one row of the targets table.
target() { printf '| %s | %s | %s |\n' "$1" "$2" "$(verdict "$3" "$4" "$5")"; }
# target_ratio LABEL W P OP LIMIT: a ratio target, shown rounded, judged exact.
target_ratio() { target "$1" "$(ratio "$2" "$3") x" "$(exact_ratio "$2" "$3")" "$4" "$5"; }
mkdir -p "$RESULTS_DIR"
OUT=$RESULTS_DIR/compare-$STAMP.md
{
  echo "# walrep vs PostgreSQL 15 streaming replication ($DATE)"
  echo
  echo "- machine: $NPROC CPUs${CPU:+ ($CPU)}, $MEM memory, kernel $KERNEL"
  echo "- disk (temp dir $WORK_BASE, both systems): $DISK"
  echo "- disk reference, pg_test_fsync -s 2, one 8 kB write: $FSYNC_LINE"
  echo "- round-trip reference, 100 bytes between two processes over loopback TCP (benches/loopback-rtt.c): p50 $RTT_P50 us, p99 $RTT_P99 us"
  echo "- PostgreSQL: $("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL)/PostgreSQL/'), primary + 1 synchronous standby on 127.0.0.1 (synchronous_commit = on, fsync = on, shared_buffers = $PG_SHARED_BUFFERS), pgbench over TCP, -j min(clients, 2)"
  echo "- walrep: ${WALREP:-not available} (mode remote-flush)"
  [[ -z "$ANY1_CLIENTS" ]] || echo "- ANY 1 rows: PostgreSQL with two synchronous standbys, synchronous_standby_names = 'ANY 1 (standby1, standby2)'; walrep with three data nodes and its witness, --sync-standbys 'ANY 1 (n1, n2, n3)'"
  echo "- load: one single-row INSERT of a ${VALUE_BYTES}-byte value per transaction, ${DURATION} s per client count; catch-up backlog ${BACKLOG_MB} MiB (PostgreSQL: ${BACKLOG_REAL_MB} MiB of WAL measured by LSN)"
  echo "- ratio = walrep / PostgreSQL for every row: above 1 is better for TPS and MB/s, below 1 is better for latencies and times"
  echo "- promotion: PostgreSQL is \`pg_ctl promote\` (issued by hand, no failure detection) until the first INSERT commits; walrep is automatic failover p50 from SIGKILL of the primary to the first acknowledged write on the new one, detection included (heartbeat ${HEARTBEAT_MS} ms, failover timeout ${FAILOVER_TIMEOUT_MS} ms): not like for like"
  echo
  echo "| metric | PostgreSQL | walrep (remote-flush) | walrep/PostgreSQL |"
  echo "| --- | ---: | ---: | ---: |"
  for c in $CLIENTS; do
    n="$c client"; [[ "$c" == 1 ]] || n="${c} clients"
    row "sync commit, $n: TPS" "${PG[tps_$c]}" "${WR[tps_$c]}"
    row "sync commit, $n: p50 ms" "${PG[p50_$c]}" "${WR[p50_$c]}"
    row "sync commit, $n: p99 ms" "${PG[p99_$c]}" "${WR[p99_$c]}"
    row "sync commit, $n: p99.9 ms" "${PG[p999_$c]}" "${WR[p999_$c]}"
  done
  for c in $ANY1_CLIENTS; do
    n="$c client"; [[ "$c" == 1 ]] || n="${c} clients"
    row "ANY 1 of two sync standbys, $n: TPS" "${PG[tps_any1_$c]}" "${WR[tps_any1_$c]}"
    row "ANY 1 of two sync standbys, $n: p50 ms" "${PG[p50_any1_$c]}" "${WR[p50_any1_$c]}"
    row "ANY 1 of two sync standbys, $n: p99 ms" "${PG[p99_any1_$c]}" "${WR[p99_any1_$c]}"
    row "ANY 1 of two sync standbys, $n: p99.9 ms" "${PG[p999_any1_$c]}" "${WR[p999_any1_$c]}"
  done
  row "catch-up: receive MB/s" "${PG[recv_mb_s]}" "${WR[recv_mb_s]}"
  row "catch-up: replay/apply MB/s" "${PG[apply_mb_s]}" "${WR[apply_mb_s]}"
  row "promotion / failover: s" "${PG[promote_s]}" "${WR[failover_p50_s]}"
  echo
  echo "walrep only:"
  echo
  echo "| metric | walrep |"
  echo "| --- | ---: |"
  echo "| failover at ${HEARTBEAT_MS} ms / ${FAILOVER_TIMEOUT_MS} ms (defaults): p50 / p99 s, over $FAILOVER_TRIALS SIGKILLs | ${WR[failover_p50_s]} / ${WR[failover_p99_s]} |"
  echo "| failover at ${AGGR_HEARTBEAT_MS} ms / ${AGGR_FAILOVER_TIMEOUT_MS} ms: p50 / p99 s | ${WR[aggr_p50_s]} / ${WR[aggr_p99_s]} |"
  echo "| false failovers in ${LOAD_SECONDS} s of a healthy pair under load (defaults / aggressive) | ${WR[failover_false]} / ${WR[aggr_false]} |"
  echo "| acknowledged writes lost over all failover trials (defaults / aggressive) | ${WR[failover_lost]} / ${WR[aggr_lost]} |"
  echo "| planned switchover write pause: p50 / max ms, over $SWITCHOVER_TRIALS switchovers | ${WR[pause_p50_ms]} / ${WR[pause_max_ms]} |"
  echo "| acknowledged writes lost over the switchovers | ${WR[switch_lost]} |"
  echo "| catch-up peak RSS: primary / standby MiB | ${WR[primary_rss_mb]} / ${WR[standby_rss_mb]} |"
  echo
  echo "Performance targets, judged on this run:"
  echo
  echo "| target | this run | met |"
  echo "| --- | --- | :---: |"
  target_ratio "remote-flush, 1 writer: p50 <= 0.5 x PostgreSQL's" "${WR[p50_1]}" "${PG[p50_1]}" "<=" 0.5
  target_ratio "remote-flush, 1 writer: p99 <= 0.5 x PostgreSQL's" "${WR[p99_1]}" "${PG[p99_1]}" "<=" 0.5
  bound=$(awk -v f="$FSYNC_US" -v r="$RTT_P50" 'BEGIN {
    if (f !~ /^[0-9.]+$/ || r !~ /^[0-9.]+$/) { print "n/a"; exit } printf "%.3f", 2 * (f + r) / 1000 }')
  target "remote-flush, 1 writer: p50 <= 2 x (one fdatasync + one loopback round trip)" \
    "${WR[p50_1]} ms against 2 x ($FSYNC_US + $RTT_P50) us = $bound ms" "${WR[p50_1]}" "<=" "$bound"
  for c in $CLIENTS; do
    [[ "$c" == 1 ]] && continue
    target_ratio "remote-flush, $c writers: >= 3 x PostgreSQL's TPS" "${WR[tps_$c]}" "${PG[tps_$c]}" ">=" 3
  done
  target_ratio "catch-up: >= 2 x PostgreSQL's receive rate" "${WR[recv_mb_s]}" "${PG[recv_mb_s]}" ">=" 2
  rss=$(awk -v a="${WR[primary_rss_mb]}" -v b="${WR[standby_rss_mb]}" 'BEGIN {
    if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/) { print "n/a"; exit } print (a > b ? a : b) }')
  target "catch-up: peak RSS < 200 MB on both nodes" "$rss MiB at most" "$rss" "<" 200
  target "failover at the defaults: p99 <= 1.5 s" "${WR[failover_p99_s]} s" "${WR[failover_p99_s]}" "<=" 1.5
  target "failover at ${AGGR_HEARTBEAT_MS} ms / ${AGGR_FAILOVER_TIMEOUT_MS} ms: p99 <= 0.5 s" "${WR[aggr_p99_s]} s" "${WR[aggr_p99_s]}" "<=" 0.5
  falses=$(awk -v a="${WR[failover_false]}" -v b="${WR[aggr_false]}" 'BEGIN {
    if (a !~ /^[0-9]+$/ || b !~ /^[0-9]+$/) { print "n/a"; exit } print a + b }')
  target "no false failover under load" "$falses" "$falses" "<=" 0
  echo
  echo "MB/s are MiB (2^20 bytes) per second, timed from the standby's start until it has flushed (receive) / replayed (apply) up to the primary's LSN (PostgreSQL: polled every ~20 ms; its standby first answered ${PG[up_s]} s after \`pg_ctl start\`, startup included in both rates)."
} >"$OUT"
echo
cat "$OUT"
echo
log "written to $OUT"
