"""sesflow tracker."""
