#!/usr/bin/env python3
"""Container entrypoint: ``entrypoint.py MANIFEST`` runs the job; see ``--help``."""

import sys

from kpms_job.cli import main

if __name__ == "__main__":
    sys.exit(main())
