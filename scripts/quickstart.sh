#!/usr/bin/env bash
# The main job from a fresh clone: set up the environment, then serve the app with the shipped
# checkpoints (training quick ones on the bundled sample first where none are shipped).
# Arguments go to `somtok quickstart`, e.g. --retrain or --port 7861.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/env.sh
HF_HUB_OFFLINE=1 exec .venv/bin/somtok quickstart "$@"
