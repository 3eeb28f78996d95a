"""sesflow: send email through Amazon SES at scale, over Redis Streams.

The roles (`sesflow.ingest`, `sesflow.sender`, `sesflow.tracker`, `sesflow.stats`), what they
share (`sesflow.common`) and the command line (`sesflow.cli`) live in the repository's top-level
folders of the same names; `pyproject.toml` maps them under this one namespace.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sesflow")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0"
