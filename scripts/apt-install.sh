# Sourced by the install scripts, for Debian packages:
#   apt_check ME PKG...    exit 2 with one line where they cannot be installed (no apt-get, not
#                          root and no passwordless sudo)
#   apt_install ME PKG...  install them; dpkg's chatter goes to a log shown only when a step
#                          fails (exit 1)
# Between the two the caller says, one line per package, what it installs and why.
APT_SUDO=()

apt_check() {
    local me=$1
    shift
    local cmd="apt-get update && apt-get install -y $*"
    if ! command -v apt-get >/dev/null; then
        echo "$me: missing $* and no apt-get (not Debian): install $* with your package manager (Debian: $cmd)" >&2
        exit 2
    fi
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            APT_SUDO=(sudo -n)
        else
            echo "$me: missing $* and not root: run as root: $cmd" >&2
            exit 2
        fi
    fi
}

apt_install() {
    local me=$1
    shift
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/$me.XXXXXX")
    # apt-get -qq still lets dpkg talk: keep its output in the log, show it only on failure
    if ! "${APT_SUDO[@]}" apt-get update -qq >"$log" 2>&1 \
        || ! "${APT_SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-upgrade "$@" >"$log" 2>&1; then
        echo "$me: failed: apt-get install $*" >&2
        tail -n 30 "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}
