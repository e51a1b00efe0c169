#!/usr/bin/env bash
# Create .venv and install somtok into it, only when missing or when the
# dependency files changed since the last install. Source it or run it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.somtok-install-stamp"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -c1-16)"

if [ ! -x "$venv/bin/python" ]; then
    echo "somtok: creating $venv" >&2
    python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "somtok: installing dependencies into $venv (first run takes a few minutes)" >&2
    "$venv/bin/pip" install --quiet --upgrade pip
    # torch first, pinned: an unpinned torch would pull a CUDA build.
    "$venv/bin/pip" install --quiet -c "$root/constraints.txt" torch==2.13.0
    "$venv/bin/pip" install --quiet -c "$root/constraints.txt" -e "$root[dev]"
    echo "$want" >"$stamp"
fi
