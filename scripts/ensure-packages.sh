#!/usr/bin/env bash
# ensure-packages.sh [COMMAND:]PACKAGE... : apt-get install the Debian packages whose command is
# missing (COMMAND defaults to PACKAGE; an absolute COMMAND is a path that must exist). Tries the
# install from the current package lists first and refreshes them only if that fails, so a warm
# machine never touches the network. Non-interactive: CI runs with no standard input.
set -euo pipefail
missing=()
for spec in "$@"; do
  cmd="${spec%%:*}"
  if [ "${cmd#/}" != "$cmd" ]; then [ -e "$cmd" ] && continue; else command -v "$cmd" >/dev/null 2>&1 && continue; fi
  missing+=("${spec#*:}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
echo "ensure-packages: installing ${missing[*]} (apt-get)" >&2
install() { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" </dev/null >&2; }
install || { apt-get update >&2 </dev/null && install; }
