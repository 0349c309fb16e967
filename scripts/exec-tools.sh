#!/usr/bin/env bash
# GHC and bubblewrap: what eval needs to compile and run generated Haskell in a sandbox (pass@k).
# Installed with apt-get where this is a Debian/Ubuntu machine and we are root; otherwise one line says how.
# Never fails: without them the demo and eval run and report execution as skipped.
if command -v ghc >/dev/null 2>&1 && command -v bwrap >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing GHC and bubblewrap for execution-based eval (pass@k) with apt-get"
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        ghc bubblewrap >/dev/null; then
        exit 0
    fi
    echo "apt-get could not install ghc and bubblewrap; pass@k will be skipped"
    exit 0
fi
echo "note: pass@k needs GHC and bubblewrap, which are not installed: 'sudo apt-get install ghc bubblewrap'" \
     "(or your system's packages); until then the demo reports execution as skipped"
