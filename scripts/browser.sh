#!/usr/bin/env bash
# Chromium for the headless-browser check of report.html (tests marked `browser`, skipped without it).
# Installed with apt-get where this is a Debian/Ubuntu machine and we are root (about 45 s); never fails.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the report's headless-browser test with apt-get"
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core >/dev/null; then
        exit 0
    fi
    echo "apt-get could not install chromium; the browser test will be skipped"
    exit 0
fi
echo "note: the report's browser test needs Chromium: 'sudo apt-get install chromium'; until then it is skipped"
