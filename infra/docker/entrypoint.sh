#!/bin/sh
# Entrypoint of the slidewatch images.
#
#   docker run IMAGE run --region hongya ...   ->  slidewatch run --region hongya ...
#   docker run IMAGE                           ->  slidewatch --help
#   docker run IMAGE dask worker tcp://...     ->  dask worker tcp://...    (Dask pods)
#   docker run IMAGE prefect flow-run execute  ->  prefect flow-run execute (Prefect jobs)
#
# A slidewatch command name or an option goes to `slidewatch`; any other first argument
# that is a program on PATH runs as is, so Dask, dask-gateway and Prefect can start their
# own processes in this image without overriding the container command.
set -e
case "${1:-}" in
    "") exec slidewatch --help ;;
    -*|run|demo|train|evaluate|watch|serve|report) exec slidewatch "$@" ;;
esac
if command -v "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec slidewatch "$@"
