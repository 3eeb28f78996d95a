"""sesflow sender."""
