"""The numbered schema migrations: ``mNNNN_what.py`` modules, applied in order (see ../migrate.py)."""
