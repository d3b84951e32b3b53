#!/usr/bin/env bash
# Installs what the report's browser test needs: Debian's chromium (apt) and Playwright (PyPI) into
# the virtual environment given as $1. No browser is downloaded: the test launches /usr/bin/chromium
# through Playwright's `executable_path`. CI runs as root; elsewhere sudo is used when present.
set -euo pipefail
venv="${1:?usage: .ci/install_browser.sh VENV}"
if ! command -v chromium >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
# PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: the wheel must never fetch a browser build of its own.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$venv/bin/pip" install -q "playwright>=1.40"
echo "browser: $(command -v chromium) ($(chromium --version 2>/dev/null || echo '?')); playwright $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("playwright"))')"
