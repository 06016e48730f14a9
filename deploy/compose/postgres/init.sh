#!/bin/sh
# Runs once, on the first start of an empty data directory (docker-entrypoint-initdb.d): a role and a database
# for fleetflow's registry, a role and two databases (history, visibility) for Temporal. Each service connects
# with its own role and password, from .env. Executable, so the entrypoint runs it instead of sourcing it (its
# set -u would otherwise apply to the entrypoint's own script).
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v fleetflow_password="$FLEETFLOW_DB_PASSWORD" -v temporal_password="$TEMPORAL_DB_PASSWORD" <<'SQL'
CREATE ROLE fleetflow LOGIN PASSWORD :'fleetflow_password';
CREATE DATABASE fleetflow OWNER fleetflow;
CREATE ROLE temporal LOGIN PASSWORD :'temporal_password';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;
SQL
