"""Write the lock: the exact versions installed in the environment whose test run just passed.

Usage: write_lock.py PYTHON LOCK. torch is left out (the Makefile pins it and installs it first, as a CPU or
CUDA build), and so is sftpipe itself. The lock is used as pip constraints (`pip install -c LOCK`): it fixes
the version of every package that gets installed and installs nothing on its own.
"""

import platform
import subprocess
import sys
from datetime import date

python, lock = sys.argv[1], sys.argv[2]
frozen = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable"], check=True, capture_output=True,
                        text=True).stdout.splitlines()
pins = sorted((line for line in frozen if "==" in line and line.split("==")[0].lower() not in ("torch", "sftpipe")),
              key=str.lower)
version = subprocess.run([python, "-c", "import sys, torch; print(sys.version.split()[0], torch.__version__)"],
                         check=True, capture_output=True, text=True).stdout.split()
header = [
    "# The versions `make test` passed with: pip constraints for `make demo` / `make test` (pip install -c).",
    f"# Written by `make lock` on {date.today()}: Python {version[0]}, torch {version[1]} (pinned in the Makefile),",
    f"# {platform.system()} {platform.machine()}. Refresh with `make lock`; do not edit by hand.",
]
with open(lock, "w", encoding="utf-8") as fh:
    fh.write("\n".join(header + pins) + "\n")
print(f"wrote {len(pins)} pins to {lock}")
