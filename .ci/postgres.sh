#!/usr/bin/env bash
# Start a throwaway PostgreSQL for the registry tests (idempotent), then print the export line:
#
#   eval "$(.ci/postgres.sh)"      # sets KAON_TEST_POSTGRES_URL
#   pytest tests/registry -m postgres
#
# Installs the server with apt-get when it is missing. Listens on 127.0.0.1 only, with a password.
# Settings: KAON_PG_DATA (default /tmp/kaon-postgres), KAON_PG_PORT (default 54329).
set -euo pipefail

DATA="${KAON_PG_DATA:-/tmp/kaon-postgres}"
PORT="${KAON_PG_PORT:-54329}"
USER_NAME=kaon
PASSWORD=kaon

log() { echo "$@" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

find_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

BIN="$(find_bin || true)"
if [ -z "$BIN" ] || [ ! -x "$BIN/pg_ctl" ]; then
  log "installing postgresql with apt-get ..."
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >&2
  BIN="$(find_bin)"
fi

# initdb and postgres refuse to run as root: run them as the 'postgres' account then.
if [ "$(id -u)" = 0 ]; then
  RUN_AS=(runuser -u postgres --)
  OWNER=postgres
else
  RUN_AS=()
  OWNER="$(id -un)"
fi

if [ ! -f "$DATA/PG_VERSION" ]; then
  log "initialising a cluster in $DATA ..."
  mkdir -p "$DATA"
  chown "$OWNER" "$DATA"
  chmod 700 "$DATA"
  PWFILE="$(mktemp)"
  echo "$PASSWORD" > "$PWFILE"
  chown "$OWNER" "$PWFILE"
  "${RUN_AS[@]}" "$BIN/initdb" -D "$DATA" -U "$USER_NAME" --pwfile="$PWFILE" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 >&2
  rm -f "$PWFILE"
fi

if ! "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  log "starting postgres on 127.0.0.1:$PORT ..."
  "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA" start >&2
fi

echo "export KAON_TEST_POSTGRES_URL=postgresql+psycopg2://$USER_NAME:$PASSWORD@127.0.0.1:$PORT/postgres"
