"""Stage 5 of prepare: weighted mixing of sources in the train split (`data.mix`).

The plan (a repeat count per example) is `sftpipe.data.mixing.plan_mix`, shared with train-time mixing of
several data dirs; `pipeline.py` writes the repeated rows.
"""

from sftpipe.data.mixing import plan_mix

__all__ = ["plan_mix"]
