"""sesflow ingest."""
