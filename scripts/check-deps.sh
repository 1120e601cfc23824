#!/usr/bin/env bash
# Fails if the library (the `walrep` package an engine adds to its
# Cargo.toml) depends, directly or not, on a crate only the daemon needs.
# CI runs it; run it after changing the library's [dependencies].
set -euo pipefail
cd "$(dirname "$0")/.."
DAEMON_ONLY='clap indicatif toml prometheus-client serde serde_json tracing-subscriber axum'
tree=$(cargo tree -p walrep -e normal --prefix none --no-dedupe | awk '{print $1}' | sort -u)
bad=0
for crate in $DAEMON_ONLY; do
  if grep -qx "$crate" <<<"$tree"; then
    echo "check-deps: the library depends on '$crate', which only the daemon needs:" >&2
    cargo tree -p walrep -e normal -i "$crate" >&2 || true
    bad=1
  fi
done
count=$(wc -l <<<"$tree")
if [[ $bad != 0 ]]; then
  echo "check-deps: move that dependency to walrep-daemon/Cargo.toml (or behind a feature)." >&2
  exit 1
fi
echo "check-deps: the library's normal tree has $count crates, none of them daemon-only"
