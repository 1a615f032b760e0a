"""Users over HTTP: sign-up, sign-in by e-mail or username, profile fields, 2FA with pyotp."""

from __future__ import annotations

import time

import httpx
import pyotp
from conftest import PASSWORD


async def _login(client: httpx.AsyncClient, **body: str) -> httpx.Response:
    return await client.post("/auth/login", json={"password": PASSWORD, **body})


async def test_sign_up_then_sign_in_by_email_or_username_and_edit_the_profile(
    client: httpx.AsyncClient,
) -> None:
    # proves: X4, I1 (login by e-mail or username; profile fields), I3
    answer = await client.post(
        "/auth/register", json={"email": "Ada@Example.com", "password": PASSWORD, "name": "Ada"}
    )
    assert answer.status_code == 202, answer.text
    by_email = await _login(client, email="ada@example.com")
    assert by_email.status_code == 200, by_email.text
    me = {"Authorization": f"Bearer {by_email.json()['access_token']}"}

    profile = {
        "username": "ada.l",
        "avatar_url": "https://example.com/ada.png",
        "bio": "Counts things.",
    }
    changed = await client.patch("/auth/me", json=profile, headers=me)
    assert changed.status_code == 200, changed.text
    shown = (await client.get("/auth/me", headers=me)).json()
    assert {k: shown[k] for k in profile} == profile and shown["email"] == "ada@example.com"

    by_username = await _login(client, username="ada.l")
    assert by_username.status_code == 200, by_username.text
    wrong = await client.post("/auth/login", json={"username": "ada.l", "password": "nope" * 4})
    unknown = await _login(client, username="nobody.here")
    # one answer for a wrong password and an unknown user: no account discovery
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]


async def test_a_bad_profile_is_a_422_that_echoes_nothing(
    client: httpx.AsyncClient, sign_in
) -> None:
    # proves: X4, I8 (odd input refused at validation, never a 5xx, never echoed)
    _, me = await sign_in("grace@example.com")
    for body in (
        {"avatar_url": "javascript:alert(1)"},
        {"bio": "nul\x00byte"},
        {"username": "x" * 500},
        {"email": "other@example.com"},
    ):
        answer = await client.patch("/auth/me", json=body, headers=me)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "alert(1)" not in answer.text and "nul\x00byte" not in answer.text


async def test_two_factor_with_a_real_authenticator(client: httpx.AsyncClient, sign_in) -> None:
    # proves: X4, I4 (TOTP enrol / confirm / verify, replay refused, recovery codes single-use)
    _, me = await sign_in("edsger@example.com")
    enrolled = await client.post("/auth/2fa/enrol", json={"password": PASSWORD}, headers=me)
    assert enrolled.status_code == 200, enrolled.text
    uri = next(v for v in enrolled.json().values() if str(v).startswith("otpauth://"))
    totp = pyotp.parse_uri(uri)  # what an authenticator app does with the QR code
    assert isinstance(totp, pyotp.TOTP)

    wrong = str((int(totp.now()) + 1) % 1_000_000).zfill(6)
    refused = await client.post(
        "/auth/2fa/confirm", json={"code": wrong, "password": PASSWORD}, headers=me
    )
    assert refused.status_code in (401, 422), refused.text
    confirmed = await client.post(
        "/auth/2fa/confirm", json={"code": totp.now(), "password": PASSWORD}, headers=me
    )
    assert confirmed.status_code == 200, confirmed.text
    codes = next(v for v in confirmed.json().values() if isinstance(v, list))
    assert len(codes) == 10

    without = await _login(client, email="edsger@example.com")
    assert without.status_code == 401, without.text
    # the next time step's code: the confirm spent this one
    code = totp.at(time.time() + 30)
    with_code = await _login(client, email="edsger@example.com", otp=code)
    assert with_code.status_code == 200, with_code.text
    replayed = await _login(client, email="edsger@example.com", otp=code)
    assert replayed.status_code == 401, "a TOTP code works once"

    with_recovery = await _login(client, email="edsger@example.com", otp=codes[0])
    assert with_recovery.status_code == 200, with_recovery.text
    again = await _login(client, email="edsger@example.com", otp=codes[0])
    assert again.status_code == 401, "a recovery code works once"
