"""sesflow common: settings, schema, keys, Redis connection, Lua scripts, logging, errors."""
