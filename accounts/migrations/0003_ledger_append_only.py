"""The ledger is append-only (reliability.md L5): the database itself refuses UPDATE and
DELETE on accounts_ledgerentry, whatever the code does. Mistakes are fixed with new entries.

TRUNCATE is left to privileges, not a trigger: the application's role must not own the
table (docs/operations.md), and Django's test runner truncates between transactional tests."""

from django.db import migrations

PG_FORWARD = """
CREATE OR REPLACE FUNCTION polysim_ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'accounts_ledgerentry is append-only (% refused)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER ledger_append_only
    BEFORE UPDATE OR DELETE ON accounts_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION polysim_ledger_append_only();
"""
PG_REVERSE = """
DROP TRIGGER IF EXISTS ledger_append_only ON accounts_ledgerentry;
DROP FUNCTION IF EXISTS polysim_ledger_append_only();
"""
SQLITE_FORWARD = [
    """CREATE TRIGGER ledger_no_update BEFORE UPDATE ON accounts_ledgerentry
       BEGIN SELECT RAISE(ABORT, 'accounts_ledgerentry is append-only (UPDATE refused)'); END;""",
    """CREATE TRIGGER ledger_no_delete BEFORE DELETE ON accounts_ledgerentry
       BEGIN SELECT RAISE(ABORT, 'accounts_ledgerentry is append-only (DELETE refused)'); END;""",
]
SQLITE_REVERSE = [
    "DROP TRIGGER IF EXISTS ledger_no_update;",
    "DROP TRIGGER IF EXISTS ledger_no_delete;",
]


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FORWARD, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_FORWARD:
            schema_editor.execute(statement)


def reverse(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_REVERSE, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_REVERSE:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_initial")]
    operations = [migrations.RunPython(forward, reverse)]
