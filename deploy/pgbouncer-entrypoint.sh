#!/bin/bash
# PgBouncer in front of the tenant databases, its configuration kept current by tenantd:
#   1. `tenantd pgbouncer config` writes pgbouncer.ini and userlist.txt (0600) once;
#   2. PgBouncer starts on them;
#   3. `tenantd pgbouncer config --watch --pid` rewrites them on every catalog change and
#      sends PgBouncer SIGHUP (both run as the same user, so the signal is allowed).
# The container stops when either process stops. Needs the tenantd settings of the
# catalog (TENANTD_CATALOG_URL, TENANTD_MASTER_KEY); PGBOUNCER_DIR and PGBOUNCER_LISTEN
# choose where the files go and where PgBouncer listens.
set -euo pipefail
dir=${PGBOUNCER_DIR:-/var/lib/tenantd/pgbouncer}
listen=${PGBOUNCER_LISTEN:-0.0.0.0:6432}

until tenantd pgbouncer config --out "$dir" --listen "$listen"; do
  echo "pgbouncer-entrypoint: catalog not ready (or a tenant left out, see above); retrying" >&2
  [ -f "$dir/pgbouncer.ini" ] && break
  sleep 2
done
pgbouncer "$dir/pgbouncer.ini" &
bouncer=$!
echo "$bouncer" > "$dir/pgbouncer.pid"
tenantd pgbouncer config --out "$dir" --listen "$listen" --watch --pid "$dir/pgbouncer.pid" &
watcher=$!
trap 'kill -TERM "$bouncer" "$watcher" 2>/dev/null' TERM INT
wait -n "$bouncer" "$watcher"
status=$?
kill -TERM "$bouncer" "$watcher" 2>/dev/null || true
wait
exit "$status"
