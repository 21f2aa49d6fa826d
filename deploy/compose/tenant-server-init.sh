#!/bin/bash
# Runs once in each tenant server's fresh data directory (docker-entrypoint-initdb.d): the
# least-privileged admin role tenantd logs in with, and the maintenance database closed to
# tenant roles (README, "Database servers").
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -v pw="$TENANTD_SERVER_PASSWORD" <<'SQL'
CREATE ROLE tenantd_admin LOGIN CREATEDB CREATEROLE PASSWORD :'pw';
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
GRANT CONNECT ON DATABASE postgres TO tenantd_admin;
REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
