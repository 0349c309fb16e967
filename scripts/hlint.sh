#!/usr/bin/env bash
# hlint (Debian package, ~40 MB installed, a few seconds): prepare's hlint figure of Haskell solutions
# (data.verify.quality / max_hlint_per_100_lines). Installed with apt-get where this is a Debian/Ubuntu machine
# and we are root; otherwise one line says how. Never fails: without it the figure is skipped and named, and
# the hlint test is skipped with that reason.
if command -v hlint >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing hlint for prepare's code-quality figures with apt-get"
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends hlint >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
             hlint >/dev/null; }; then
        exit 0
    fi
    echo "apt-get could not install hlint; the hlint figure and its test will be skipped"
    exit 0
fi
echo "note: prepare's hlint figure needs hlint, which is not installed: 'sudo apt-get install hlint'"
