#!/usr/bin/env bash
# Installs what the dashboard's browser test (tests/tests/browser.rs) drives: headless
# Chromium and chromedriver, from Debian's packages. Idempotent: installs only what is
# missing. Needs root (CI runs as root); .ci/run calls it before `cargo test`.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "chromium and chromedriver already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ci-browser.sh: chromium/chromedriver missing and not root; run as root to install them" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
echo "installed: $(chromium --version 2>/dev/null) / $(chromedriver --version)"
