#!/usr/bin/env bash
# Installs the system packages the test suite needs when they are missing (Debian, apt-get):
# one line per package says what and why. Idempotent; `make test` and `make test-fast` call it
# (and so .ci/run does). `make sweep` needs neither package.
set -euo pipefail

me=install-test-deps
pkgs=()
whys=()

# tests/sweep/test_sweep.py finds the server binaries at /usr/lib/postgresql/*/bin/initdb
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    pkgs+=(postgresql)
    whys+=("tests/sweep/test_sweep.py starts a throwaway PostgreSQL server to test the shared study storage")
fi
# tests/report/test_study.py looks for `chromium` (or `chromium-browser`) on PATH
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    pkgs+=(chromium)
    whys+=("tests/report/test_study.py renders the study report in headless chromium")
fi

if ((${#pkgs[@]} == 0)); then
    echo "$me: ok (PostgreSQL server and chromium present)"
    exit 0
fi

cmd="apt-get update && apt-get install -y ${pkgs[*]}"
if ! command -v apt-get >/dev/null; then
    echo "$me: missing ${pkgs[*]} and no apt-get (not Debian): install ${pkgs[*]} with your package manager (Debian: $cmd)" >&2
    exit 2
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        echo "$me: missing ${pkgs[*]} and not root: run as root: $cmd" >&2
        exit 2
    fi
fi

for i in "${!pkgs[@]}"; do
    echo "$me: installing ${pkgs[i]} (Debian package) — ${whys[i]}"
done

# apt-get -qq still lets dpkg talk: keep its output in a log and show it only when a step fails
log=$(mktemp "${TMPDIR:-/tmp}/$me.XXXXXX")
trap 'rm -f "$log"' EXIT
quiet() {
    if ! "$@" >"$log" 2>&1; then
        echo "$me: failed: $*" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
}
quiet "${sudo[@]}" apt-get update -qq
quiet "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-upgrade "${pkgs[@]}"

# the package names are right for Debian; make sure they gave the tests what they look for
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
    || ! { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then
    echo "$me: installed ${pkgs[*]} but initdb or chromium is still missing" >&2
    exit 1
fi
