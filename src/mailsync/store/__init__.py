"""The store: SQLModel tables, engines, migrations and the few queries everything shares."""
