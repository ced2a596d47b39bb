"""Who may do what on layerbootd: the credentials and the checks (docs/security.md has the whole model).

* **admin token** (``state/admin.token``, root on the server): everything. **API tokens** of admin accounts
  (:mod:`.admins`, ``layerboot admin token create``) count as the admin token; console sessions
  (:mod:`.web`) open the console and the /api/v1 routes only.
* **boot token** (:mod:`.boottoken`): read-only, stateless, minted by ``GET /boot/MAC.ipxe`` for the kernel
  command line. Reads that node's manifest and the objects its profile names, posts its boot events, claims a
  node secret (with proof of the asset key). Nothing that writes.
* **node secret** (:mod:`.nodesecret`): the node's write credential, stored hashed; never on a command line.
  Everything a boot token allows, plus uploads, upload status and the node's status. A diskless node claims
  one at boot (:mod:`.claim`); ``layerboot nodes register`` / ``nodes secret rotate`` print one for the admin.

:mod:`.access` maps a request's ``Authorization: Bearer`` to one of these (a :class:`~.access.Caller`).
"""
