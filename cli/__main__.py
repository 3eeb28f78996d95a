"""`python -m sesflow.cli`: the same as the `sesflow` command."""

from sesflow.cli.main import main

if __name__ == "__main__":
    main()
