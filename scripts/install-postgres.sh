#!/usr/bin/env bash
# Install Debian's postgresql package (initdb, pg_ctl, postgres) if it is missing. The tests
# start their own server in a temporary directory (tests/pg.py); nothing is started here.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
echo "setup: installing Debian's postgresql package (a real PostgreSQL for the replica tests)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  postgresql >/dev/null
