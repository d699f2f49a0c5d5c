"""Fixes moto's Lake Formation permission catalog in the installed copy.

Run with the venv's python (scripts/moto.sh does, right after installing).

The bug (moto 5.2.5): PermissionCatalog keeps Permission objects in a set,
and their hash covers the permission list. add_permission() merges a second
grant on the same (principal, resource) *in place*, so the object sits in
the set under its old hash; a later revoke then calls set.remove() on it and
gets KeyError, which moto turns into HTTP 500. The fix takes the object out
of the set before merging and puts it back after, as remove_permission()
already does.

Also fixed: list_permissions() filtering by a named table (or by the table
wildcard) reads ["Table"]["Name"] (or ["TableWildcard"]) of every grant of
that principal in the database, and a grant of the other kind has no such
key: KeyError, HTTP 500. .get() compares them as simply not matching.

Both edits change moto's bookkeeping only, not what it accepts or answers
for a correct implementation: a request that real AWS would refuse is still
answered as before. The script refuses to run (exit 1) when the code it
patches is not exactly what it expects, so a moto upgrade is looked at
instead of patched blindly; a second run on a patched copy is a no-op.
"""

import pathlib
import sys

import moto.lakeformation.models as models

EDITS = [
    (
        """                # Permission with same principal and resouce, only once of these can exist
                existing_permission.merge(permission)
                return
""",
        """                # Permission with same principal and resouce, only once of these can exist
                # tessera patch: re-add so the set sees the new hash
                self.permissions.remove(existing_permission)
                existing_permission.merge(permission)
                self.permissions.add(existing_permission)
                return
""",
    ),
    (
        """                    equals = equals and (
                        table.name == permission_resource["Table"]["Name"]
                    )
""",
        """                    equals = equals and (
                        table.name == permission_resource["Table"].get("Name")  # tessera patch
                    )
""",
    ),
    (
        """                    equals = equals and (
                        table.table_wildcard
                        == permission_resource["Table"]["TableWildcard"]
                    )
""",
        """                    equals = equals and (
                        table.table_wildcard
                        == permission_resource["Table"].get("TableWildcard")  # tessera patch
                    )
""",
    ),
]


def main() -> int:
    path = pathlib.Path(models.__file__)
    text = path.read_text()
    changed = 0
    for old, new in EDITS:
        if text.count(new) == 1 and text.count(old) == 0:
            continue  # already patched
        if text.count(old) != 1:
            print(
                f"moto-lakeformation.patch.py: {path} does not contain the expected code "
                "(moto changed?); look at whether the bug is still there and update the patch:\n"
                + old,
                file=sys.stderr,
            )
            return 1
        text = text.replace(old, new)
        changed += 1
    if changed:
        path.write_text(text)
        # Drop the stale bytecode so the edit is what runs.
        for pyc in path.parent.glob("__pycache__/models.*.pyc"):
            pyc.unlink()
    print(f"moto-lakeformation.patch.py: {changed} edit(s) applied to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
