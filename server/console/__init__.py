"""The admin web console under ``/console/``: server-rendered pages (Jinja2 templates and a stylesheet as
package data, see docs/console.md), login with admin accounts (server/auth/admins.py), and forms that make the
same changes as the API (server/api/actions.py)."""
