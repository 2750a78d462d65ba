"""How requests travel: the HTTP transports, request building, and how failures are classified."""
