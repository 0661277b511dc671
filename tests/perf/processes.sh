# Starting, waiting for and stopping the programs a benchmark script runs, and
# removing its temporary directory; sourced by compare.sh and etcd.sh, which
# define TMP, KEEP_TMP, PIDS, NAMES, log and die.
# shellcheck shell=bash

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME COMMAND...: run a program in the foreground of a background job.
start() {
    local name=$1
    shift
    "$@" >"$TMP/$name.log" 2>&1 &
    PIDS+=($!)
    NAMES+=("$name")
}

# wait_port NAME PORT: until something accepts on PORT, or NAME's process died.
wait_port() {
    local name=$1 port=$2 i pid=""
    for ((i = 0; i < ${#NAMES[@]}; i++)); do
        [ "${NAMES[i]}" = "$name" ] && pid=${PIDS[i]}
    done
    for ((i = 0; i < 600; i++)); do
        port_open "$port" && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$TMP/$name.log" >&2 || true
            die "$name exited before listening on $port"
        fi
        sleep 0.1
    done
    tail -n 30 "$TMP/$name.log" >&2 || true
    die "$name is not listening on $port after 60 s"
}

# stop_started: every program `start` ran, last first: SIGTERM, then SIGKILL
# after 5 s for one that ignores it.
stop_started() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        local n=0
        while kill -0 "${PIDS[i]}" 2>/dev/null && [ $n -lt 50 ]; do
            sleep 0.1
            n=$((n + 1))
        done
        if kill -0 "${PIDS[i]}" 2>/dev/null; then
            log "${NAMES[i]} (pid ${PIDS[i]}) ignored SIGTERM; killing it"
            kill -KILL "${PIDS[i]}" 2>/dev/null || true
        fi
        wait "${PIDS[i]}" 2>/dev/null || true
    done
}

# remove_tmp: the temporary directory, unless KEEP_TMP=1 asks to keep it.
remove_tmp() {
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ "$KEEP_TMP" = 1 ]; then
            log "kept $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
}
