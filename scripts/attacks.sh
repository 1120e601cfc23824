#!/usr/bin/env bash
# Replays the attacks of docs/SECURITY.md against a running pair and prints,
# for each, what was tried, how the node refused it and what it logged.
#
# It starts n1 (primary) and n2 (standby) on loopback with mutual TLS on
# the replication port, HTTPS on the HTTP API and a bearer token (`walrep
# certs` for the certificates, a second `walrep certs` set for the attacker's
# CA), under a file-descriptor limit of 1024 (the usual default), puts 50
# writes/s on n1, and replays:
#   - StreamWal as n1 to the standby with a forged record at the next LSN
#     (right epoch, CRC computed), Fence at epoch 2^62 to both nodes in turn,
#     forged "not in sync" heartbeats, forced Promote, FetchSnapshot from a
#     stranger: each with no TLS, TLS without a certificate, a certificate
#     from another CA, and the cluster CA's certificate for n3;
#   - 8 stalled FetchSnapshot calls (by a stranger; then with the peer's own
#     certificate, to show the cap of two transfers); a Fence at 2^62 with
#     the peer's own certificate (the epoch bound);
#   - redirect headers on a write to the standby (its 503 must name the
#     real primary);
#   - PUT, DELETE, POST /promote?force=true without the token and with a
#     wrong one;
#   - 1,100 connections to n1's HTTP port (and a write from 127.0.0.2
#     meanwhile), 1,100 that finish their TLS handshake and then idle
#     (the cap fills: a known gap); 500 connections each holding a
#     partial 4 MB body (n1's RSS printed);
# then stops the load and checks one primary, equal state hashes, every
# acknowledged write readable on both nodes. Last, with the pair stopped:
# n2's data dir started with --cluster-id beta, with its WAL meta deleted,
# and a node whose --peer is itself; each must refuse to start.
#
# Traffic goes to 127.0.0.1 only. Needs bash, curl and python3. Runs in
# about a minute and a half; bounded by a 3-minute watchdog.
#
#   scripts/attacks.sh            # prints the report (markdown) to stdout
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in curl python3; do
  command -v $tool >/dev/null || {
    echo "attacks: $tool is needed" >&2
    exit 2
  }
done
TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --quiet -p walrep-daemon --bin walrep --example rpc_as
BIN=$TARGET_DIR/debug/walrep
RPC=$TARGET_DIR/debug/examples/rpc_as

WORK=$(mktemp -d)
PIDS=()
LOAD_PID=
cleanup() {
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# The watchdog: never more than 3 minutes, whatever hangs.
(sleep 180 && echo "attacks: watchdog: 3 minutes passed, stopping" >&2 && kill -TERM $$) &
WATCHDOG=$!
PIDS+=("$WATCHDOG")

read -r G1 G2 H1 H2 G3 H3 < <(python3 -c '
import socket
ss=[socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1",0))
print(*[s.getsockname()[1] for s in ss])')
N1=127.0.0.1:$H1
N2=127.0.0.1:$H2
TLS=$WORK/tls
EVIL=$WORK/evil
"$BIN" certs --dir "$TLS" --names n1,n2,n3 --http-hosts 127.0.0.1,localhost >/dev/null
"$BIN" certs --dir "$EVIL" --names n1,n2 >/dev/null
CA=$TLS/ca.pem
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/token"
TOKEN=$(cat "$WORK/token")

start_node() { # start_node ID PEER_ID GRPC HTTP PEER_GRPC ROLE [extra flags...]
  local id=$1 peer_id=$2 grpc=$3 http=$4 peer=$5 role=$6
  shift 6
  # A hard limit of 1024 open files, as on many hosts: the node keeps half
  # for itself whatever the clients do.
  (
    ulimit -n 1024
    exec "$BIN" node --id "$id" --peer-id "$peer_id" --data-dir "$WORK/$id" \
      --listen "127.0.0.1:$grpc" --http "127.0.0.1:$http" --peer "127.0.0.1:$peer" \
      --role "$role" --cluster-id walrep --heartbeat-ms 100 --failover-timeout-ms 1000 \
      --tls-ca "$CA" --tls-cert "$TLS/$id.pem" --tls-key "$TLS/$id.key" \
      --http-tls-cert "$TLS/http.pem" --http-tls-key "$TLS/http.key" \
      --http-token-file "$WORK/token" --http-idle-timeout-ms 10000 "$@"
  ) >>"$WORK/$id.log" 2>&1 &
  STARTED=$!
}

get() { curl -s --max-time 5 --cacert "$CA" "https://$1$2"; }
field() { # field ADDR NAME: one field of /health
  get "$1" /health | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])" 2>/dev/null || echo "?"
}
wait_for() { # wait_for WHAT SECONDS COMMAND...
  local what=$1 limit=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then
      echo "attacks: timed out waiting for $what" >&2
      tail -5 "$WORK"/n1.log "$WORK"/n2.log >&2
      exit 1
    fi
    sleep 0.1
  done
}
rejected() { # rejected ADDR API REASON: walrep_rejected_requests_total for it
  get "$1" /metrics | python3 -c '
import sys
api, reason = sys.argv[1], sys.argv[2]
n = 0
for l in sys.stdin:
    if l.startswith("walrep_rejected_requests") and f"api=\"{api}\"" in l and f"reason=\"{reason}\"" in l:
        n += int(float(l.split()[-1]))
print(n)' "$2" "$3"
}
# What the nodes logged since `mark`: the first new WARN/ERROR line, trimmed.
mark() { L1=$(wc -l <"$WORK/n1.log"); L2=$(wc -l <"$WORK/n2.log"); }
logged() {
  sleep 0.3
  local line
  line=$({
    tail -n +$((L1 + 1)) "$WORK/n1.log" | sed 's/^/n1: /'
    tail -n +$((L2 + 1)) "$WORK/n2.log" | sed 's/^/n2: /'
  } | grep -E 'WARN|ERROR' | grep -Ev 'heartbeat|lagging' | head -"${1:-1}" |
    sed -E 's/[0-9T:.-]+Z +//; s/\x1b\[[0-9;]*m//g' | cut -c1-400 || true)
  if [ -n "$line" ]; then
    echo "$line"
  else
    echo "${2:-(no new warning: a kind of refusal already logged is counted, not logged again, for a minute)}"
  fi
}
ROWS=()
row() { ROWS+=("| $1 | $2 | $3 |"); }

echo "# walrep attack replay"
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, walrep $(git rev-parse --short HEAD 2>/dev/null || echo '?')."
echo "Pair: n1 primary, n2 standby on 127.0.0.1, mutual TLS (cluster CA), HTTPS, bearer token, open-file limit 1024."
echo
start_node n1 n2 "$G1" "$H1" "$G2" primary
P1=$STARTED
start_node n2 n1 "$G2" "$H2" "$G1" standby
P2=$STARTED
PIDS+=("$P1" "$P2")
wait_for "n1 writable" 30 test "$(field "$N1" writable)" = True
wait_for "n2 streaming" 30 test "$(field "$N2" role)" = standby

# ---------------------------------------------------------------- the load
cat >"$WORK/load.py" <<'EOF'
import http.client, json, os, ssl, sys, time
addr, ca, token, acked_path, stop_path = sys.argv[1:6]
host, port = addr.rsplit(":", 1)
ctx = ssl.create_default_context(cafile=ca)
conn = None
attempted = acked = failed = 0
acked_file = open(acked_path, "w", buffering=1)
next_at = time.monotonic()
i = 0
while not os.path.exists(stop_path):
    next_at += 0.02  # 50 writes a second
    key, value = f"load-{i}", f"value-{i}"
    attempted += 1
    try:
        if conn is None:
            conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=5)
        conn.request("PUT", f"/kv/{key}", body=value, headers={
            "Authorization": f"Bearer {token}", "Idempotency-Key": f"attack-load-{i}"})
        r = conn.getresponse()
        body = r.read()
        if r.status == 200:
            acked += 1
            acked_file.write(f"{key} {value}\n")
            i += 1
        else:
            failed += 1
    except Exception:
        failed += 1
        conn = None
    time.sleep(max(0, next_at - time.monotonic()))
print(json.dumps({"attempted": attempted, "acked": acked, "failed": failed}))
EOF
python3 "$WORK/load.py" "$N1" "$CA" "$TOKEN" "$WORK/acked" "$WORK/stop-load" >"$WORK/load.out" 2>&1 &
LOAD_PID=$!
wait_for "the load's first writes" 20 test -s "$WORK/acked"
echo "Background load: 50 writes/s to n1 over one HTTPS keep-alive connection (reconnecting when it breaks)."
echo

# ------------------------------------------------------------ replication
G1A=127.0.0.1:$G1
G2A=127.0.0.1:$G2
IDENTITIES=("plain" "none" "cert:$EVIL/n1.pem:$EVIL/n1.key" "cert:$TLS/n3.pem:$TLS/n3.key")
who() {
  case $1 in
    plain) echo "no TLS" ;;
    none) echo "TLS, no certificate" ;;
    cert:$EVIL/*) echo "other CA's cert" ;;
    *) echo "cluster CA's cert for n3" ;;
  esac
}
attack_rpc() { # attack_rpc LOGLINES TITLE TO TO_ID AS RPC-ARGS...: each identity in turn
  local lines=$1 title=$2 to=$3 to_id=$4 as=$5
  shift 5
  echo "## $title"
  echo
  echo '```'
  mark
  local n_before=$(($(rejected "$N1" grpc unauthenticated) + $(rejected "$N2" grpc unauthenticated)))
  local outcomes=() id out
  for id in "${IDENTITIES[@]}"; do
    local ident=$id
    # An attacker posing as the node's peer needs a certificate naming it:
    # the other CA's one for the name it claims.
    [ "$id" = "cert:$EVIL/n1.pem:$EVIL/n1.key" ] && ident="cert:$EVIL/$as.pem:$EVIL/$as.key"
    if out=$("$RPC" --to "$to" --to-id "$to_id" --as "$as" --identity "$ident" --trust "$CA" "$@" 2>&1); then
      outcomes+=("$(who "$id"): refused")
    else
      outcomes+=("$(who "$id"): ACCEPTED")
    fi
    printf '%-26s %s\n' "$(who "$id"):" "$(echo "$out" | head -1 | cut -c1-200)"
  done
  local n_after=$(($(rejected "$N1" grpc unauthenticated) + $(rejected "$N2" grpc unauthenticated)))
  local log
  log=$(logged "$lines")
  echo "counted: walrep_rejected_requests_total{api=\"grpc\",reason=\"unauthenticated\"} +$((n_after - n_before))"
  echo "logged:"
  echo "$log"
  echo '```'
  echo
  local verdict="refused at the TLS handshake (no gRPC call reached the node), 4 of 4"
  if printf '%s\n' "${outcomes[@]}" | grep -q ACCEPTED; then verdict="**ACCEPTED**: $(printf '%s; ' "${outcomes[@]}")"; fi
  log=${log//|/\\|}
  row "$title" "$verdict; counted +$((n_after - n_before))" "${log//$'\n'/<br>}"
}

E2=$(field "$N2" epoch)
L2=$(field "$N2" last_lsn)
attack_rpc 4 "StreamWal as n1 to the standby, forged record at LSN $((L2 + 1)), epoch $E2" "$G2A" n2 n1 stream-wal --lsn $((L2 + 1)) --epoch "$E2"
attack_rpc 1 "Fence at epoch 2^62 to n2 (as n1)" "$G2A" n2 n1 fence --epoch 4611686018427387904
attack_rpc 1 "Fence at epoch 2^62 to n1 (as n2)" "$G1A" n1 n2 fence --epoch 4611686018427387904
attack_rpc 1 "Fence at epoch $((E2 + 1)) to n2 (as n1), the alternation's next" "$G2A" n2 n1 fence --epoch $((E2 + 1))
attack_rpc 1 "Heartbeat as n1 to n2 saying not in sync" "$G2A" n2 n1 heartbeat --epoch "$E2" --lsn "$L2"
attack_rpc 1 "Promote (force) to n2 as n1" "$G2A" n2 n1 promote --epoch "$E2"
attack_rpc 1 "FetchSnapshot from a stranger to n1 (as n2)" "$G1A" n1 n2 fetch-snapshot --epoch "$E2"
attack_rpc 1 "8 stalled FetchSnapshot to n1 (as n2)" "$G1A" n1 n2 fetch-snapshot --epoch "$E2" --count 8 --stall 2

echo "## 8 stalled FetchSnapshot to n1 with the peer's own certificate (the cap of two transfers)"
echo
echo '```'
mark
out=$("$RPC" --to "$G1A" --to-id n1 --as n2 --identity "cert:$TLS/n2.pem:$TLS/n2.key" --trust "$CA" \
  fetch-snapshot --epoch "$E2" --count 8 --stall 2 2>&1 || true)
echo "$out" | cut -c1-220
served=$(grep -c ACCEPTED <<<"$out" || true)
refused=$(grep -c refused <<<"$out" || true)
log=$(logged)
echo "logged:  $log"
echo '```'
echo
row "8 stalled FetchSnapshot with the peer's own certificate" "$served served and held, $refused refused" "${log//|/\\|}"

echo "## Fence at epoch 2^62 with the peer's own certificate (the epoch bound)"
echo
echo '```'
mark
out=$("$RPC" --to "$G2A" --to-id n2 --as n1 --identity "cert:$TLS/n1.pem:$TLS/n1.key" --trust "$CA" \
  fence --epoch 4611686018427387904 2>&1 || true)
echo "$out" | cut -c1-300
log=$(logged)
echo "logged:  $log"
echo "n2 after: role $(field "$N2" role), epoch $(field "$N2" epoch)"
echo '```'
echo
row "Fence at epoch 2^62 with the peer's own certificate" "$(echo "$out" | head -1 | cut -c1-160 | sed 's/|/\\|/g'); n2 stays $(field "$N2" role) at epoch $(field "$N2" epoch)" "${log//|/\\|}"

# ------------------------------------------------------------------ HTTP
echo "## A write to the standby with headers naming the attacker"
echo
echo '```'
mark
reply=$(curl -s --max-time 5 --cacert "$CA" -o - -w ' %{http_code}' -X PUT --data x \
  -H "Authorization: Bearer $TOKEN" -H 'Host: evil.example:6666' \
  -H 'X-Forwarded-Host: evil.example:6666' -H 'Forwarded: host=evil.example:6666' \
  -H 'X-Walrep-Leader: evil.example:6666' "https://$N2/kv/redirect-me" || true)
echo "answer: $reply"
log=$(logged 1 "(no warning: a write to the standby is an ordinary 503, counted as reason=\"not_primary\")")
echo "logged:  $log"
echo '```'
echo
status=${reply##* }
leader=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1].rsplit(" ",1)[0])["leader"])' "$reply" 2>/dev/null || echo "?")
row "Redirect headers (Host, X-Forwarded-Host, Forwarded) on a write to the standby" "$status naming leader $leader (n1 is $N1)" "${log//|/\\|}"

http_attack() { # http_attack TITLE NODE CURL-ARGS...
  local title=$1 node=$2
  shift 2
  mark
  local before after code
  before=$(rejected "$node" http unauthorized)
  code=$(curl -s --max-time 5 --cacert "$CA" -o /dev/null -w '%{http_code}' "$@" || true)
  after=$(rejected "$node" http unauthorized)
  local log
  log=$(logged)
  printf '%-44s %s (unauthorized +%d)  logged: %s\n' "$title" "$code" $((after - before)) "$log"
  row "$title" "$code, counted unauthorized +$((after - before))" "${log//|/\\|}"
}
echo "## Writes and promotions without the token, and with a wrong one"
echo
echo '```'
WRONG=(-H "Authorization: Bearer not-the-token-0123456789")
http_attack "PUT without the token" "$N1" -X PUT --data evil "https://$N1/kv/evil"
http_attack "DELETE without the token" "$N1" -X DELETE "https://$N1/kv/load-1"
http_attack "POST /promote?force=true without the token" "$N2" -X POST "https://$N2/promote?force=true"
http_attack "PUT with a wrong token" "$N1" -X PUT --data evil "${WRONG[@]}" "https://$N1/kv/evil"
http_attack "DELETE with a wrong token" "$N1" -X DELETE "${WRONG[@]}" "https://$N1/kv/load-1"
http_attack "POST /promote?force=true with a wrong token" "$N2" -X POST "${WRONG[@]}" "https://$N2/promote?force=true"
echo "evil written: $(get "$N1" /kv/evil | head -c 80) (a 404 error body means no)"
echo '```'
echo

# ---------------------------------------------------------- connections
fresh_write() { # fresh_write KEY [SOURCE-IP]: the status of one PUT over a new connection
  curl -s --max-time 5 --cacert "$CA" -o /dev/null -w '%{http_code}' -X PUT --data fresh \
    --interface "${2:-127.0.0.1}" -H "Authorization: Bearer $TOKEN" "https://$N1/kv/$1" 2>/dev/null || true
}
cat >"$WORK/flood.py" <<'EOF'
import json, os, socket, ssl, sys, time
mode, addr, hold, ca, token = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
host, port = addr.rsplit(":", 1)
socks, errors = [], 0
if mode == "connections":
    for _ in range(1100):
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
            socks.append(s)
        except OSError:
            errors += 1
    time.sleep(0.5)
    # How many the node closed at once (the cap): readable with EOF.
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except (BlockingIOError, ssl.SSLError):
            pass
        except OSError:
            closed += 1
    open(sys.argv[6], "w").write("held")
    time.sleep(hold)
    print(json.dumps({"opened": len(socks), "connect_errors": errors, "closed_by_node_at_once": closed}))
elif mode == "handshaken":
    ctx = ssl.create_default_context(cafile=ca)
    for _ in range(1100):
        try:
            raw = socket.create_connection((host, int(port)), timeout=2)
            socks.append(ctx.wrap_socket(raw, server_hostname=host))
        except (OSError, ssl.SSLError):
            errors += 1
    open(sys.argv[6], "w").write("held")
    time.sleep(hold)
    print(json.dumps({"handshakes_finished": len(socks), "refused_or_failed": errors}))
else:
    ctx = ssl.create_default_context(cafile=ca)
    size = 4_000_000
    sent = 0
    for i in range(500):
        try:
            raw = socket.create_connection((host, int(port)), timeout=5)
            s = ctx.wrap_socket(raw, server_hostname=host)
            s.sendall((f"PUT /kv/big-{i} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n"
                       f"Content-Length: {size}\r\n\r\n").encode() + b"x" * 65536)
            socks.append(s)
            sent += 1
        except OSError:
            errors += 1
    open(sys.argv[6], "w").write("held")
    time.sleep(hold)
    print(json.dumps({"connections_with_partial_4MB_bodies": sent, "errors": errors}))
for s in socks:
    s.close()
EOF
rss() { awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
# The node's pid is the subshell's exec'd process.
NODE1=$P1

echo "## 1,100 connections to n1's HTTP port"
echo
echo '```'
mark
before_acked=$(wc -l <"$WORK/acked")
python3 "$WORK/flood.py" connections "$N1" 3 "$CA" "$TOKEN" "$WORK/held1" >"$WORK/flood1.out" &
FLOOD=$!
wait_for "the flood" 30 test -f "$WORK/held1"
during=$(fresh_write fresh-during-flood)
during_other=$(fresh_write fresh-during-flood-other 127.0.0.2)
fds_during=$(fds "$NODE1")
sleep 2
during_acked=$(($(wc -l <"$WORK/acked") - before_acked))
wait $FLOOD
echo "flood: $(cat "$WORK/flood1.out")"
echo "n1 open files during the flood: $fds_during (limit 1024; the node keeps half for itself; 64 handshakes at most from one address)"
echo "a fresh write during the flood from 127.0.0.1, the flood's address: $during (000: closed on arrival)"
echo "a fresh write during the flood from 127.0.0.2: $during_other"
echo "the load's writes acknowledged during the flood: $during_acked"
sleep 0.5
after=$(fresh_write fresh-after-flood)
echo "a fresh write after the flood: $after"
echo "n2: role $(field "$N2" role), n1: role $(field "$N1" role)"
log=$(logged 2)
echo "logged:"
echo "$log"
echo '```'
echo
log=${log//|/\\|}
log=${log//$'\n'/<br>}
row "1,100 connections to n1's HTTP port" "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["opened"], "opened,", d["closed_by_node_at_once"], "closed at once")' "$WORK/flood1.out"); load kept writing ($during_acked acked meanwhile); fresh write meanwhile from the flood's address $during, from 127.0.0.2 $during_other; after: $after; n2 $(field "$N2" role)" "$log"

echo "## 1,100 connections that finish their TLS handshake, then send nothing"
echo
echo '```'
mark
before_acked=$(wc -l <"$WORK/acked")
python3 "$WORK/flood.py" handshaken "$N1" 2 "$CA" "$TOKEN" "$WORK/held3" >"$WORK/flood3.out" &
FLOOD=$!
wait_for "the handshaken flood" 60 test -f "$WORK/held3"
during=$(fresh_write fresh-during-tls-flood 127.0.0.2)
sleep 1
during_acked=$(($(wc -l <"$WORK/acked") - before_acked))
wait $FLOOD
echo "flood: $(cat "$WORK/flood3.out")"
echo "a fresh write during the flood from 127.0.0.2: $during (000: the connection cap is full; this is the gap SECURITY.md names)"
echo "the load's writes acknowledged meanwhile: $during_acked"
sleep 0.5
after=$(fresh_write fresh-after-tls-flood)
echo "a fresh write after the flood: $after; n2: role $(field "$N2" role)"
log=$(logged)
echo "logged:  $log"
echo '```'
echo
row "1,100 connections that finish their handshake, then idle" "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["handshakes_finished"], "handshakes finished,", d["refused_or_failed"], "refused")' "$WORK/flood3.out"); fresh write meanwhile from 127.0.0.2: $during (the cap is full: a known gap); load kept writing ($during_acked acked); after: $after; n2 $(field "$N2" role)" "${log//|/\\|}"

echo "## 500 connections each holding a partial 4 MB body (with the token)"
echo
echo '```'
mark
rss_before=$(rss "$NODE1")
before_acked=$(wc -l <"$WORK/acked")
t0=$(date +%s%N)
python3 "$WORK/flood.py" bodies "$N1" 4 "$CA" "$TOKEN" "$WORK/held2" >"$WORK/flood2.out" &
FLOOD=$!
peak=0
while kill -0 $FLOOD 2>/dev/null; do
  now=$(awk '/VmRSS/ {print $2}' "/proc/$NODE1/status")
  [ "$now" -gt "$peak" ] && peak=$now
  sleep 0.2
done
wait $FLOOD || true
held_acked=$(($(wc -l <"$WORK/acked") - before_acked))
held_s=$(( ($(date +%s%N) - t0) / 1000000000 ))
sleep 0.5
echo "bodies: $(cat "$WORK/flood2.out")"
echo "the load's writes acknowledged while the bodies were sent and held ($held_s s, 50/s offered): $held_acked (a writer waits while the bodies hold the write budget)"
echo "n1 RSS: before $rss_before, peak while held $((peak / 1024)) MiB, after $(rss "$NODE1") (write budget: 64 MiB)"
echo "a fresh write after: $(fresh_write fresh-after-bodies); n2: role $(field "$N2" role)"
log=$(logged 1 "(no warning: the bodies wait for the write budget; closed before http_request_timeout_ms, so no 408)")
echo "logged:  $log"
echo '```'
echo
row "500 connections holding partial 4 MB bodies" "n1 RSS $rss_before -> peak $((peak / 1024)) MiB -> $(rss "$NODE1"); load acked $held_acked meanwhile; n2 $(field "$N2" role)" "${log//|/\\|}"

# ----------------------------------------------------- the pair afterwards
touch "$WORK/stop-load"
wait "$LOAD_PID" || true
LOAD_PID=
LAST=$(field "$N1" last_lsn)
wait_for "n2 to apply everything" 30 test "$(field "$N2" applied_lsn)" = "$LAST"
H1=$(field "$N1" state_hash)
H2=$(field "$N2" state_hash)
lost=$(python3 - "$WORK/acked" "$N1" "$N2" "$CA" <<'EOF'
import http.client, ssl, sys
acked, ca = sys.argv[1], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
lost = 0
for addr in sys.argv[2:4]:
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=5)
    for line in open(acked):
        key, value = line.split()
        conn.request("GET", f"/kv/{key}")
        r = conn.getresponse()
        if r.read().decode() != value:
            lost += 1
print(lost)
EOF
)
roles="n1 $(field "$N1" role), n2 $(field "$N2" role)"
echo "## The pair afterwards"
echo
echo '```'
echo "load: $(cat "$WORK/load.out")"
echo "roles: $roles; epochs: n1 $(field "$N1" epoch), n2 $(field "$N2" epoch)"
echo "state hashes at LSN $LAST: n1 $H1, n2 $H2"
echo "acknowledged writes lost (read back on both nodes): $lost"
echo '```'
echo
HEALTHY=yes
[ "$roles" = "n1 primary, n2 standby" ] && [ "$H1" = "$H2" ] && [ "$lost" = 0 ] || HEALTHY=no

# ------------------------------------------------- data dirs and startup
kill -TERM "$P1" "$P2"
wait_for "both nodes to stop" 15 bash -c "! kill -0 $P1 2>/dev/null && ! kill -0 $P2 2>/dev/null"
start_refused() { # start_refused TITLE FLAGS...: the node must exit with an error
  local title=$1
  shift
  local out code
  out=$(timeout 15 "$BIN" node "$@" 2>&1) && code=0 || code=$?
  local msg
  msg=$(grep -E 'walrep:|ERROR|error' <<<"$out" | tail -1 | sed -E 's/[0-9T:.-]+Z +//' | cut -c1-300 || true)
  printf '%-48s exit %s: %s\n' "$title" "$code" "$msg"
  local verdict="refused, exit $code"
  [ "$code" = 0 ] || [ "$code" = 124 ] && verdict="**STARTED** (exit $code)"
  row "$title" "$verdict" "${msg//|/\\|}"
}
base() { # the flags of n2 but --peer, on data dir $1
  echo --id n2 --peer-id n1 --data-dir "$1" --listen "127.0.0.1:$G3" --http "127.0.0.1:$H3" \
    --tls-ca "$CA" --tls-cert "$TLS/n2.pem" --tls-key "$TLS/n2.key"
}
echo "## Data dirs and start-up"
echo
echo '```'
# shellcheck disable=SC2046
start_refused "n2's data dir (cluster walrep) with --cluster-id beta" $(base "$WORK/n2") --peer "127.0.0.1:$G1" --cluster-id beta
cp -a "$WORK/n2" "$WORK/n2-nometa"
rm "$WORK/n2-nometa/wal/meta"
# shellcheck disable=SC2046
start_refused "n2's data dir with wal/meta deleted" $(base "$WORK/n2-nometa") --peer "127.0.0.1:$G1" --cluster-id walrep
# shellcheck disable=SC2046
start_refused "--peer pointing at the node itself" $(base "$WORK/n2-self") --cluster-id walrep --peer "127.0.0.1:$G3"
echo '```'
echo

echo "## Summary"
echo
echo "| attack | outcome | what the node logged |"
echo "|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "Pair after the attacks: $roles; state hashes equal: $([ "$H1" = "$H2" ] && echo yes || echo NO) ($H1); acknowledged writes lost: $lost; load $(cat "$WORK/load.out")."
ACCEPTED=$(printf '%s\n' "${ROWS[@]}" | grep -c 'ACCEPTED\|STARTED' || true)
echo
if [ "$HEALTHY" = yes ] && [ "$ACCEPTED" = 0 ]; then
  echo "RESULT: PASS (every attack refused, the pair healthy, $SECONDS s)"
else
  echo "RESULT: FAIL ($ACCEPTED attacks not refused; pair healthy: $HEALTHY)"
  exit 1
fi
