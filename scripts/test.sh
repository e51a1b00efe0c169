#!/usr/bin/env bash
# The test command CI runs: lint, format check, then the test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/env.sh

# The browser test needs Debian's Chromium and its WebDriver; install them where we may
# (root with apt-get, as on CI). Without them that one test is skipped with the reason.
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
    echo "somtok: installing chromium and chromium-driver for the browser test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        chromium chromium-driver >/dev/null) || echo "somtok: chromium install failed" >&2
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest "$@"
