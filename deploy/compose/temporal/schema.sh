#!/bin/sh
# Temporal's persistence and visibility schemas in Postgres, with the admin tools' temporal-sql-tool. The
# databases exist already (postgres/init.sh). setup-schema -v 0.0 only creates the version tables when they are
# missing, and update-schema applies only the versioned migrations not yet applied, so this is safe to re-run,
# and re-running it with a newer admin-tools image is how Temporal's schema is upgraded.
# Connection: SQL_PLUGIN, SQL_HOST, SQL_PORT, SQL_USER, SQL_PASSWORD from the environment.
set -eu

schema=/etc/temporal/schema/postgresql/v12
for db in temporal:temporal temporal_visibility:visibility; do
  name=${db%%:*}
  dir=$schema/${db#*:}/versioned
  echo "temporal-schema: $name from $dir"
  temporal-sql-tool --db "$name" setup-schema -v 0.0
  temporal-sql-tool --db "$name" update-schema -d "$dir"
done
echo "temporal-schema: done"
