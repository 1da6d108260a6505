#!/bin/sh
# Entrypoint of the fw-screen worker image (docker/Dockerfile, docker/compose.yaml).
#
#   worker [RAPIDFIRE-ARGS...]  (default) write the LaunchPad and FWorker files from the environment
#                               (docker/worker_config.py), then `rlaunch ... rapidfire` for FW_SCREEN_CATEGORY
#   init                        write the files and initialise the database (empty LaunchPad, indexes), exit
#   config                      write the files only, exit
#   anything else               run it as a command (e.g. `fw-screen status -l ~/config/launchpad.yaml`)
#
# Environment (see docker/README.md): FW_SCREEN_CATEGORY cheap|ml|dft|all (default all), FW_SCREEN_DB_HOST,
# FW_SCREEN_DB_PORT, FW_SCREEN_DB_NAME, FW_SCREEN_DB_USERNAME, FW_SCREEN_DB_PASSWORD_FILE or
# FW_SCREEN_DB_PASSWORD, FW_SCREEN_DB_AUTHSOURCE, FW_SCREEN_LAUNCHPAD (a LaunchPad file of your own),
# FW_SCREEN_CONFIG_DIR, FW_SCREEN_LAUNCH_DIR, FW_SCREEN_SLEEP (s between polls when no work is READY),
# FW_SCREEN_NLAUNCHES (default infinite: keep polling; 0: stop when no work is left).
# Never `set -x` here: the environment may hold the database password.
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
: "${FW_SCREEN_CATEGORY:=all}"
: "${FW_SCREEN_CONFIG_DIR:=$HOME/config}"
: "${FW_SCREEN_LAUNCH_DIR:=$HOME/launches}"
: "${FW_SCREEN_SLEEP:=60}"
: "${FW_SCREEN_NLAUNCHES:=infinite}"
export FW_SCREEN_CATEGORY FW_SCREEN_CONFIG_DIR

case "$FW_SCREEN_CATEGORY" in
    cheap | ml | dft | all) ;;
    *)
        echo "fw-screen worker: FW_SCREEN_CATEGORY must be cheap, ml, dft or all, not '$FW_SCREEN_CATEGORY'" >&2
        exit 64
        ;;
esac

mode=${1:-worker}
case "$mode" in
    worker | init | config) [ "$#" -gt 0 ] && shift ;;
    *) exec "$@" ;;
esac

if [ "$mode" = init ]; then
    python "$here/worker_config.py" --init
else
    python "$here/worker_config.py"
fi
# The password now lives in the LaunchPad file (mode 600) only: keep it out of rlaunch's, pw.x's and
# mpirun's environments.
unset FW_SCREEN_DB_PASSWORD
[ "$mode" = worker ] || exit 0

# One launch folder per container: replicas of a service can share one volume.
launches="$FW_SCREEN_LAUNCH_DIR/$(uname -n)"
mkdir -p "$launches"
cd "$launches"
exec rlaunch -l "$FW_SCREEN_CONFIG_DIR/launchpad.yaml" -w "$FW_SCREEN_CONFIG_DIR/fworker_$FW_SCREEN_CATEGORY.yaml" \
    rapidfire --nlaunches "$FW_SCREEN_NLAUNCHES" --sleep "$FW_SCREEN_SLEEP" "$@"
