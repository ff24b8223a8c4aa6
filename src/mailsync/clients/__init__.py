"""The two API clients over one HTTP base: request loop, auth, pacing."""
