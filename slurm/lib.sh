# Helpers shared by start-cluster.sh and stop-cluster.sh (sourced, not run).

# True if process $1 is alive (not a zombie: a killed daemon can linger as
# one here) and is named $2 (guards against a reused pid).
is_running() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    # Format: "pid (comm) state ...".
    [[ "$stat" == *"($2) "[!Z]" "* ]]
}

# Prints the pid recorded in pid file $1 if that process is alive and is $2.
daemon_pid() {
    local pid
    [[ -r "$1" ]] || return 1
    pid="$(<"$1")"
    [[ "$pid" =~ ^[0-9]+$ ]] && is_running "$pid" "$2" || return 1
    echo "$pid"
}
