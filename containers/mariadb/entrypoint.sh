#!/bin/sh
# First start (bootstrap mode reads one statement per line): create the data directory, the root password, one database and its user from the official
# image's MARIADB_* variables; then run mariadbd in the foreground as the (non-root) mysql user.
set -eu
DATADIR=/var/lib/mysql
quote() { printf "%s" "$1" | sed "s/\\\\/\\\\\\\\/g; s/'/\\\\'/g"; }
# As the official image: NAME_FILE names a file holding NAME (Podman secrets under /run/secrets).
from_file() {
    eval "file=\${${1}_FILE:-}"
    if [ -n "$file" ]; then
        [ -r "$file" ] || { echo "mariadb-entrypoint: ${1}_FILE=$file cannot be read" >&2; exit 1; }
        eval "$1=\$(cat \"\$file\")"
    fi
}
from_file MARIADB_ROOT_PASSWORD
from_file MARIADB_PASSWORD
if [ ! -d "$DATADIR/mysql" ]; then
    mariadb-install-db --datadir="$DATADIR" --skip-test-db --auth-root-authentication-method=normal \
        --skip-name-resolve >/dev/null
    {
        echo "FLUSH PRIVILEGES;"
        if [ -n "${MARIADB_ROOT_PASSWORD:-}" ]; then
            pw=$(quote "$MARIADB_ROOT_PASSWORD")
            echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$pw';"
            echo "CREATE USER 'root'@'%' IDENTIFIED BY '$pw';"
            echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
        fi
        if [ -n "${MARIADB_DATABASE:-}" ]; then
            echo "CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\` CHARACTER SET utf8mb4;"
        fi
        if [ -n "${MARIADB_USER:-}" ] && [ -n "${MARIADB_PASSWORD:-}" ]; then
            echo "CREATE USER '$(quote "$MARIADB_USER")'@'%' IDENTIFIED BY '$(quote "$MARIADB_PASSWORD")';"
            if [ -n "${MARIADB_DATABASE:-}" ]; then
                echo "GRANT ALL ON \`$MARIADB_DATABASE\`.* TO '$(quote "$MARIADB_USER")'@'%';"
            fi
        fi
    } | mariadbd --bootstrap --datadir="$DATADIR" --skip-networking >/dev/null
fi
# The server needs none of them: not in its environment.
unset MARIADB_ROOT_PASSWORD MARIADB_PASSWORD MARIADB_ROOT_PASSWORD_FILE MARIADB_PASSWORD_FILE
exec mariadbd --datadir="$DATADIR" --bind-address=0.0.0.0 --skip-name-resolve --socket=/run/mysqld/mysqld.sock "$@"
