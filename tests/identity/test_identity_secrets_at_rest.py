"""No plaintext password, token, key, code or TOTP secret in any column, nor in any log line."""

from __future__ import annotations

import logging

import pyotp
import pytest
from sqlalchemy import text

from pgstack.db.database import Database
from pgstack.errors import AuthenticationError
from pgstack.identity import Identity

from .conftest import OTHER_STRONG, STRONG, reset_token

THIRD = "amber Kettles whistle 9 old tunes"


async def test_a_full_scenario_leaves_no_secret_in_the_database_or_the_logs(
    pgstack_migrated_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # proves: I2, I3, I4, I5
    caplog.set_level(logging.DEBUG)  # every logger, SQL statements and parameters included
    identity = Identity(pgstack_migrated_db)
    secrets: list[str] = [STRONG, OTHER_STRONG, THIRD]

    user = await identity.users.create("scan@example.com", STRONG, name="Scan Me")
    with pytest.raises(AuthenticationError):
        await identity.auth.authenticate("scan@example.com", OTHER_STRONG)
    login = await identity.auth.login("scan@example.com", STRONG)
    secrets.append(login.token)
    verify = await identity.auth.request_email_verification(user.id)
    secrets.append(verify)
    await identity.auth.verify_email(verify)
    reset = await reset_token(identity, "scan@example.com")
    assert reset is not None
    secrets.append(reset)
    await identity.auth.reset_password(reset, OTHER_STRONG)
    await identity.auth.change_password(user.id, OTHER_STRONG, THIRD)
    pending = await reset_token(identity, "scan@example.com")
    assert pending is not None
    secrets.append(pending)

    enrolment = await identity.two_factor.enrol(user.id)
    secrets.append(enrolment.secret)
    codes = await identity.two_factor.confirm(user.id, pyotp.TOTP(enrolment.secret).now())
    secrets.extend(codes)
    secrets.extend(c.replace("-", "") for c in codes)
    await identity.auth.login("scan@example.com", THIRD, otp=codes[0])

    issued = await identity.api_keys.create(user.id, "scan", scopes=["a"])
    secrets.append(issued.key)
    rotated = await identity.api_keys.rotate(issued.api_key.id)
    secrets.append(rotated.key)
    await identity.api_keys.verify(rotated.key)
    # The random part of each key alone, without the visible prefix, must not appear either.
    secrets.extend(k[13:] for k in (issued.key, rotated.key))

    async with pgstack_migrated_db.transaction() as session:
        columns = (
            await session.execute(
                text(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND (data_type IN "
                    "('text', 'character varying', 'jsonb', 'json') "
                    "OR udt_name IN ('_text', '_varchar'))"
                )
            )
        ).all()
        tables = {t for t, _ in columns}
        assert {"users", "api_keys", "user_tokens", "recovery_codes", "login_sessions"} <= tables
        found: list[str] = []
        for table, column in columns:
            values = await session.scalars(
                text(f'SELECT "{column}"::text FROM "{table}" WHERE "{column}" IS NOT NULL')
            )
            for value in values:
                found.extend(
                    f"{table}.{column}" for secret in secrets if secret.lower() in value.lower()
                )
    assert found == [], f"plaintext secrets stored in {sorted(set(found))}"

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged, "the scenario logged nothing, so the log check would prove nothing"
    leaked = [s for s in secrets if s in logged]
    assert leaked == [], f"{len(leaked)} secret(s) appear in the logs"
