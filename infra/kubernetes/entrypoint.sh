#!/bin/sh
# The operator starts Flink's processes as `/docker-entrypoint.sh bash -c "kubernetes-jobmanager.sh ..."`
# (its kubernetes.entry.path); the service and the retrainer give their own command.
set -e
exec "$@"
