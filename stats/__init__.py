"""sesflow stats."""
