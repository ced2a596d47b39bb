"""Bake retries: attempts, next try and last error per upload; how long a failed upload's file is kept."""

SQL = """
ALTER TABLE uploads ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE uploads ADD COLUMN next_try REAL;
ALTER TABLE uploads ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
ALTER TABLE uploads ADD COLUMN keep_until REAL;
"""
