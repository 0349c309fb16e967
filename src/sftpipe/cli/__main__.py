"""`python -m sftpipe.cli`: what `accelerate launch -m sftpipe.cli` and `torchrun -m sftpipe.cli` run."""

import sys

from sftpipe.cli import main

sys.exit(main())
