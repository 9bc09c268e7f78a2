#!/bin/sh
# The database password comes from one place: the Docker secret that PostgreSQL's own
# container reads too (compose.yaml). asyncpg takes it from PGPASSWORD, so the policy's
# database URL carries none.
set -eu
if [ -z "${PGPASSWORD:-}" ] && [ -r /run/secrets/postgres_password ]; then
    PGPASSWORD=$(cat /run/secrets/postgres_password)
    export PGPASSWORD
fi
exec schoolgate "$@"
