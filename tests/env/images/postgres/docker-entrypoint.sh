#!/bin/sh
# Entrypoint of the test node's PostgreSQL image (see the Dockerfile beside it).
#   - Started as root: makes $PGDATA (and the socket directory) the postgres user's, then runs
#     again as that user.
#   - `postgres ...` with an empty $PGDATA: initdb there first (superuser postgres, trust
#     authentication, listening on every address of the pod), then runs postgres.
#   - Anything else: runs it as given.
# A volume's root holding lost+found is not empty: point PGDATA at a subdirectory of the mount.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "docker-entrypoint.sh: initializing a database cluster in $PGDATA"
    initdb --username=postgres --auth-local=trust --auth-host=trust --encoding=UTF8 >/dev/null
    {
        echo "listen_addresses = '*'"
        echo "unix_socket_directories = '/var/run/postgresql'"
    } >>"$PGDATA/postgresql.conf"
    echo "host all all all trust" >>"$PGDATA/pg_hba.conf"
fi

exec "$@"
