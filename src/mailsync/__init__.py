"""mailsync: Postalytics direct-mail tracking events into HighLevel contacts."""

__version__ = "0.1.0"
