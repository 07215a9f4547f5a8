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

# shellcheck source=apt-install.sh
source "$(dirname "$0")/apt-install.sh"
apt_check "$me" "${pkgs[@]}"
for i in "${!pkgs[@]}"; do
    echo "$me: installing ${pkgs[i]} (Debian package) — ${whys[i]}"
done
apt_install "$me" "${pkgs[@]}"

# the package names are right for Debian; make sure they gave the tests what they look for
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
    || ! { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then
    echo "$me: installed ${pkgs[*]} but initdb or chromium is still missing" >&2
    exit 1
fi
