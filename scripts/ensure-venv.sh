#!/usr/bin/env bash
# Makes sure PYTHON can create the project's venv: Debian ships `python3 -m venv` (its ensurepip)
# in a separate package, python3.X-venv, which a fresh machine may lack. Installs it when it is
# missing (Debian, root), with one line saying what and why; a no-op otherwise. The Makefile calls
# it before `python -m venv`.
set -euo pipefail

me=ensure-venv
python=${1:?usage: ensure-venv.sh PYTHON}
if "$python" -c "import ensurepip, venv" 2>/dev/null; then
    exit 0
fi
version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
pkg="python$version-venv"
# shellcheck source=apt-install.sh
source "$(dirname "$0")/apt-install.sh"
apt_check "$me" "$pkg"
echo "$me: installing $pkg (Debian package) — $python has no ensurepip, so it cannot make the project's .venv"
apt_install "$me" "$pkg"
if ! "$python" -c "import ensurepip, venv" 2>/dev/null; then
    echo "$me: installed $pkg but $python still has no ensurepip" >&2
    exit 1
fi
