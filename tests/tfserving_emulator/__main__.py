"""`python -m tests.tfserving_emulator --grpc-port 8500 --rest-port 8501 ...`: see the package docstring."""

from __future__ import annotations

import sys

from tests.tfserving_emulator.main import main

sys.exit(main())
