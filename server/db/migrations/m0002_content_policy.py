"""Per-profile upload content policy: which privileged classes (setuid, caps, devices) uploads may carry."""

SQL = """
CREATE TABLE profile_content_policy (
    profile TEXT PRIMARY KEY,
    allow TEXT NOT NULL
);
"""
