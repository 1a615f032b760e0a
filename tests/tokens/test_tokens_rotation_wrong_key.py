"""Key rotation given a wrong older key says the key is the likely cause, and shows no secret;
a read that fails to authenticate still says the value was altered or copied."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from pgstack.cli import app as cli
from pgstack.crypto import KeyRing, configure_encryption, generate_key
from pgstack.db.database import Database
from pgstack.errors import EncryptionError
from pgstack.tokens import TokenVault

runner = CliRunner()
OLD = generate_key("old")
WRONG_OLD = generate_key("old")  # the right id, other key material: a mistyped or new key
NEW = generate_key("new")
WRONG_KEY = (
    "cannot be decrypted with key 'old' of PGSTACK_ENCRYPTION_KEYS: is that the key it was "
    "encrypted with (the current key before the rotation)? If the key is right, the value was "
    "altered or copied from another column or row. It is left as it is."
)


@pytest.fixture
def cli_env(cli_env: dict[str, str]) -> Iterator[dict[str, str]]:
    yield {**cli_env, "PGSTACK_ENCRYPTION_KEYS": f"{NEW},{WRONG_OLD}"}
    configure_encryption(None)


async def invoke(*args: Any, **kwargs: Any) -> Any:
    # The command runs its own event loop: on a thread of its own here.
    return await asyncio.to_thread(runner.invoke, *args, **kwargs)


async def test_keys_rotate_with_a_wrong_old_key_asks_whether_the_key_is_right(
    pgstack_migrated_db: Database, cli_env: dict[str, str]
) -> None:
    # proves: T5
    right = KeyRing.parse(OLD)
    saved = await TokenVault(pgstack_migrated_db, keys=right).save("crm", "acme", "at-1", "rt-1")

    rotated = await invoke(cli, ["keys", "rotate"], env=cli_env)
    assert rotated.exit_code == 1, rotated.output
    lines = rotated.output.splitlines()
    assert lines[0] == "re-encrypted 0 value(s) in 3 column(s) under key 'new'"
    refused = [line for line in lines if line.startswith("cannot re-encrypt")]
    assert refused == [
        f"cannot re-encrypt oauth_tokens.{column} id={saved.id}: The value in "
        f'oauth_tokens.{column}["crm", "acme"] {WRONG_KEY}'
        for column in ("access_token", "refresh_token")
    ]
    for secret in ("at-1", "rt-1", *(k.split(":", 1)[1] for k in (OLD, WRONG_OLD, NEW))):
        assert secret not in rotated.output
    # Nothing was changed: the right key still reads the token.
    assert (await TokenVault(pgstack_migrated_db, keys=right).get("crm", "acme")).version == 1


async def test_the_vaults_rotation_says_the_same_and_a_read_still_says_altered(
    pgstack_migrated_db: Database,
) -> None:
    # proves: T5
    await TokenVault(pgstack_migrated_db, keys=KeyRing.parse(OLD)).save("crm", "acme", "at-1")
    wrong = TokenVault(pgstack_migrated_db, keys=KeyRing.parse(f"{NEW},{WRONG_OLD}"))
    with pytest.raises(EncryptionError) as rotation:
        await wrong.rotate_keys()
    assert rotation.value.message.startswith(
        "1 token value(s) were not re-encrypted; the first, oauth_tokens.access_token id="
    )
    assert rotation.value.message.endswith(WRONG_KEY)
    # A read cannot tell a wrong key from an altered value either: its message is unchanged.
    with pytest.raises(EncryptionError, match="failed authentication: it was altered, or it was"):
        await wrong.get("crm", "acme")
