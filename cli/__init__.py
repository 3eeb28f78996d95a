"""The `sesflow` command line: the top layer. It may import the roles and `sesflow.common`;
nothing imports it."""
