#!/usr/bin/env bash
# Fleet status at a glance: readiness with a deep check of every server.
# Usage: TENANTD_URL=http://127.0.0.1:8080 TENANTD_TOKEN=... examples/ops/fleet-status.sh
# With the embedded default, both are found in ./tenantd-data.
set -euo pipefail
url=${TENANTD_URL:-http://127.0.0.1:8080}
token=${TENANTD_TOKEN:-$(cat tenantd-data/admin-token)}
auth=(-H "Authorization: Bearer $token")

echo "== readiness (deep)"
curl -sS "${auth[@]}" "$url/readyz?deep=true"; echo
echo "== servers"
curl -sS "${auth[@]}" "$url/v1/servers"; echo
