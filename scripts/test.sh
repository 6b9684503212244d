#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine and runs the whole suite.
#   - Debian's chromium and chromium-driver for the real-browser test (needs root; skipped
#     here, not in the tests, when they are already installed),
#   - a virtual environment in .venv with the package and its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
  else
    echo "warning: chromium/chromedriver missing; tests/test_browser_ui.py will fail." \
         "Install them: sudo apt-get install chromium chromium-driver" >&2
  fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -m pytest -q "$@"
