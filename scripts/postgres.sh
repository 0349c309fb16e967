#!/usr/bin/env bash
# A local PostgreSQL for the tests of `sftpipe hpo` with workers sharing one study (marker `postgres`):
# installs Debian's postgresql with apt-get where it is missing (as root), starts the cluster with pg_ctlcluster,
# and creates the role and database the tests use. Prints the URL; the tests read it from
# SFTPIPE_TEST_POSTGRES_URL and default to this one. Safe to run again.
set -euo pipefail
USER_NAME=sftpipe
DB_NAME=sftpipe_test
# pg_ctlcluster comes with the client packages too: what counts is a cluster to start
if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(pg_lsclusters --no-header 2>/dev/null)" ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "PostgreSQL is not installed and this is not a root Debian machine: install it (apt-get install" \
             "postgresql) or set SFTPIPE_TEST_POSTGRES_URL; the postgres tests are skipped until then" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    if [ -z "$(pg_lsclusters --no-header 2>/dev/null)" ]; then  # the server was there without a cluster
        pg_createcluster "$(ls /usr/lib/postgresql | sort -V | tail -n 1)" main >/dev/null
    fi
fi
# the first cluster pg_lsclusters lists (Debian's package creates <version>/main)
read -r VERSION CLUSTER PORT STATUS _ < <(pg_lsclusters --no-header | head -n 1)
if [ "$STATUS" != online ]; then
    pg_ctlcluster "$VERSION" "$CLUSTER" start
fi
psql_admin() { runuser -u postgres -- psql -p "$PORT" -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='$USER_NAME'")" != 1 ]; then
    psql_admin -c "CREATE ROLE $USER_NAME LOGIN CREATEDB PASSWORD '$USER_NAME'"
fi
# CREATEDB: each test makes a fresh database, so workers meet an empty one as on a first run
psql_admin -c "ALTER ROLE $USER_NAME CREATEDB"
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE $DB_NAME OWNER $USER_NAME"
fi
echo "postgresql+psycopg://$USER_NAME:$USER_NAME@localhost:$PORT/$DB_NAME"
