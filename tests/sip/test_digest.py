"""Digest auth: vectors computed here independently (hashlib), replay refusal, expiry."""

from __future__ import annotations

import hashlib

import pytest

from confstream.sip.digest import (
    DigestAuthenticator,
    DigestCredentials,
    DigestOutcome,
    DigestParseError,
    parse_authorization,
)

URI = "sip:room@127.0.0.1:5060"


def _answer(alg: str, nonce: str, password: str, nc: str = "00000001") -> DigestCredentials:
    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[alg]
    ha1 = h(f"ACx:realm:{password}".encode()).hexdigest()
    ha2 = h(f"INVITE:{URI}".encode()).hexdigest()
    resp = h(f"{ha1}:{nonce}:{nc}:abc:auth:{ha2}".encode()).hexdigest()
    return DigestCredentials("ACx", "realm", nonce, URI, resp, alg, "abc", nc, "auth")


def _nonce(auth: DigestAuthenticator, now: float, alg: str) -> str:
    header = next(c for c in auth.challenges(now) if f"algorithm={alg}," in c)
    return header.split('nonce="')[1].split('"')[0]


def test_rfc2617_md5_vector() -> None:
    # RFC 2617 §3.5 example (HTTP, but the same arithmetic), computed by hand there.
    from confstream.sip.digest import compute_response

    assert (
        compute_response(
            algorithm="MD5",
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            nc="00000001",
            cnonce="0a4f113b",
            qop="auth",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
def test_good_wrong_replay_and_stale(alg: str) -> None:
    auth = DigestAuthenticator("realm", secret=b"k" * 32, nonce_ttl=300)
    nonce = _nonce(auth, 1000.0, alg)

    def verify(creds: DigestCredentials, password: str | None, now: float) -> DigestOutcome:
        return auth.verify(creds, method="INVITE", request_uri=URI, password=password, now=now)

    assert verify(_answer(alg, nonce, "pw"), "pw", 1001.0) is DigestOutcome.OK
    # same nc again: replay
    assert verify(_answer(alg, nonce, "pw"), "pw", 1002.0) is DigestOutcome.FORBIDDEN
    assert verify(_answer(alg, nonce, "pw", "00000002"), "pw", 1002.0) is DigestOutcome.OK
    assert verify(_answer(alg, nonce, "bad", "00000003"), "pw", 1002.0) is DigestOutcome.FORBIDDEN
    assert verify(_answer(alg, nonce, "pw", "00000004"), None, 1002.0) is DigestOutcome.FORBIDDEN
    # expired nonce, right password -> stale
    assert verify(_answer(alg, nonce, "pw", "00000005"), "pw", 1400.0) is DigestOutcome.STALE
    # a nonce from another secret is not ours -> new challenge
    other = _nonce(DigestAuthenticator("realm", secret=b"z" * 32), 1000.0, alg)
    assert verify(_answer(alg, other, "pw"), "pw", 1001.0) is DigestOutcome.CHALLENGE


def test_a_non_ascii_response_is_refused_not_raised() -> None:
    # found by the core fuzz test: hmac.compare_digest raised TypeError on such a str
    auth = DigestAuthenticator("realm", secret=b"k" * 32, nonce_ttl=300)
    nonce = _nonce(auth, 1000.0, "MD5")
    good = _answer("MD5", nonce, "pw")
    for response in ("\u00e9" * 32, good.response[:-1] + "\u00e9", "\ud800"):
        creds = DigestCredentials(
            "ACx", "realm", nonce, URI, response, "MD5", "abc", "00000001", "auth"
        )
        outcome = auth.verify(creds, method="INVITE", request_uri=URI, password="pw", now=1001.0)
        assert outcome is DigestOutcome.FORBIDDEN
    # and the right answer still passes afterwards (the refusals recorded no nc)
    assert (
        auth.verify(good, method="INVITE", request_uri=URI, password="pw", now=1001.0)
        is DigestOutcome.OK
    )


def test_challenges_offer_both_algorithms_with_qop() -> None:
    values = DigestAuthenticator("r").challenges(0.0, stale=True)
    assert [v.split("algorithm=")[1].split(",")[0] for v in values] == ["MD5", "SHA-256"]
    assert all('qop="auth"' in v and "stale=true" in v for v in values)


def test_parse_authorization() -> None:
    creds = parse_authorization(
        'Digest username="a",realm="r", nonce="n", uri="sip:x", response="ABC",'
        ' qop=auth, nc=00000001, cnonce="c,d", algorithm=SHA-256'
    )
    assert creds.cnonce == "c,d" and creds.response == "abc" and creds.algorithm == "SHA-256"
    with pytest.raises(DigestParseError):
        parse_authorization("Basic abc")
    with pytest.raises(DigestParseError):
        parse_authorization('Digest username="a')
    with pytest.raises(DigestParseError):
        parse_authorization('Digest username="a"')


# -- the client side: answering a far end's challenge (dial-out) ----------------------------


def test_client_answer_matches_the_rfc2617_vector() -> None:
    from confstream.sip.digest import Challenge, authorization_header

    challenge = Challenge(
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
    )
    header = authorization_header(
        challenge,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
    )
    creds = parse_authorization(header)
    assert creds.response == "6629fae49393a05397450978507c4ef1"
    assert (creds.nc, creds.qop, creds.cnonce) == ("00000001", "auth", "0a4f113b")
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41"


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
def test_client_answers_are_accepted_by_our_own_server_side(alg: str) -> None:
    from confstream.sip.digest import answer_challenges

    auth = DigestAuthenticator("realm", secret=b"k" * 32, algorithms=(alg,))
    found = answer_challenges(
        auth.challenges(1000.0), username="ACx", password="pw", method="INVITE", uri=URI
    )
    assert found is not None
    header, challenge = found
    assert challenge.algorithm == alg
    creds = parse_authorization(header)
    outcome = auth.verify(creds, method="INVITE", request_uri=URI, password="pw", now=1001.0)
    assert outcome is DigestOutcome.OK


def test_client_prefers_sha256_and_skips_what_it_cannot_answer() -> None:
    from confstream.sip.digest import answer_challenges, parse_challenge

    offered = [
        'Basic realm="x"',
        'Digest realm="x", nonce="n", algorithm=SHA-512-256',
        'Digest realm="x", nonce="n", qop="auth-int"',
        'Digest realm="x", nonce="n", algorithm=MD5',
        'Digest realm="x", nonce="n", algorithm=SHA-256, qop="auth-int,auth", stale=TRUE',
        "Digest realm=",
    ]
    assert [parse_challenge(h) is not None for h in offered] == [
        False,
        False,
        False,
        True,
        True,
        False,
    ]
    found = answer_challenges(offered, username="u", password="p", method="INVITE", uri=URI)
    assert found is not None
    assert found[1].algorithm == "SHA-256" and found[1].stale and found[1].qop == "auth"
    assert answer_challenges(offered[:3], username="u", password="p", method="X", uri=URI) is None
