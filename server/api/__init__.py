"""The admin side's data and the versioned API (``/api/v1``): records shared with the console and the CLI's
``--json`` (fleet.py, store.py), the changes an admin makes (actions.py), upload contents (changes.py),
background base imports (jobs.py), the routes (routes.py) and their OpenAPI document (openapi.py)."""
