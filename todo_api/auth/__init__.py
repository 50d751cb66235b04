"""Who is calling: `credentials` reads the session token a request carries, `sessions` checks the session
(`require_session`, the `Caller` every store function takes)."""
