"""A small chat app built on roomcast, with its own tests (``tests/``) written with
roomcast's pytest plugin only: see ``docs/testing.md``."""
