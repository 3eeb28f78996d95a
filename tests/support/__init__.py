"""What the tests share: one way to wait (`until`), the SES stub and its process, the SNS
signer, sesflow roles and Redis Cluster as processes, and each area's kit.

Imported as `support.<module>`: pytest's default `prepend` import mode puts `tests/` on
`sys.path` (through `tests/conftest.py`), mypy finds it through `mypy_path`, and scripts that
run on their own (the benchmarks, the stub as a process) put `tests/` on their path first.
"""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
