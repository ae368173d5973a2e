#!/bin/bash
# Starts (or stops and starts again) nisshi on 127.0.0.1:19093 with SQLite
# storage in $TMPDIR/nisshi-probe.db; used as RESTART_HOOK by the probes.
NISSHI="${GOVBUS_NISSHI:-$HOME/.cache/govbus/nisshi-0.6.0/bin/nisshi}"
DIR="${TMPDIR:-/tmp}"; LOG="$DIR/nisshi-probe.log"
pkill -TERM -f "nisshi broker --listener-url tcp://127.0.0.1:19093"
for _ in $(seq 1 100); do pgrep -f "tcp://127.0.0.1:19093" >/dev/null || break; sleep 0.1; done
: > "$LOG"
(cd "$DIR" && "$NISSHI" broker --listener-url tcp://127.0.0.1:19093 \
  --advertised-listener-url tcp://127.0.0.1:19093 --storage-engine sqlite://nisshi-probe.db >> "$LOG" 2>&1 &)
for _ in $(seq 1 100); do grep -q "ready in" "$LOG" && break; sleep 0.1; done
