"""``server.auth`` and ``aets[].access`` on the gateway as a real process, with real clients.

Orthanc is the PACS.  The gateway takes Basic credentials from an ``htpasswd -B`` style users
file (cost-10 bcrypt, as deployed) and bearer tokens signed in the test, whose keys it fetches
over HTTP (``jwks-url``) from a small Twisted server this test runs on loopback.
dicomweb-client (requests) searches and stores with Basic credentials; treq checks the
statuses and the JWKS fetches.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from pydicom.uid import generate_uid
from requests.exceptions import HTTPError
from twisted.internet import reactor as _global_reactor
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tests.support import peers
from tests.support.auth import Signer, bcrypt_2y, claims, jwks
from tests.support.gateway import INTEGRATION_TIMEOUT, pacs_aet, start_gateway
from tests.support.stow import fresh_test_file

reactor: Any = _global_reactor

ISSUER = "https://idp.test/realms/dicom"
AUDIENCE = "dicomrst-gateway"


def basic_header(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


class JwksResource(Resource):
    """The provider's ``/certs``: the keys it publishes now, and how often it was asked."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[dict[str, Any]] = []
        self.requests = 0

    def render_GET(self, request: Request) -> bytes:
        self.requests += 1
        request.setHeader(b"Content-Type", b"application/json")
        return jwks(*self.keys)


class AuthGatewayTests(TestCase):
    timeout = INTEGRATION_TIMEOUT

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.start())

    async def start(self) -> None:
        self.orthanc = await peers.start_orthanc(self)
        users = os.path.abspath(self.mktemp())
        with open(users, "w", encoding="utf-8") as f:
            f.write(f"alice:{bcrypt_2y('wonderland', rounds=10)}\nbob:{bcrypt_2y('builder', rounds=10)}\n")
        self.provider = JwksResource()
        self.signer = Signer("RSA", kid="k1")
        self.provider.keys = [self.signer.jwk()]
        port = reactor.listenTCP(0, Site(self.provider), interface=peers.LOCALHOST)
        self.addCleanup(port.stopListening)
        aet = pacs_aet(self.orthanc.aet, self.orthanc.host, self.orthanc.dicom_port)
        aet["access"] = {"read": ["alice", "role:radiology"], "write": ["alice"]}
        auth = {
            "basic": {"users-file": users},
            "oidc": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks-url": f"http://{peers.LOCALHOST}:{port.getHost().port}/certs",
                "roles-claim": "realm_access.roles",
            },
        }
        self.gw = await start_gateway(
            self, [aet], server={"auth": auth}, ready_headers=basic_header("bob", "builder")
        )
        self.service = f"{self.gw.url}/aets/{self.orthanc.aet}"

    def client(self, name: str | None = None, password: str = "") -> DICOMwebClient:
        if name is None:
            client = DICOMwebClient(self.service)
        else:
            session = create_session_from_user_pass(name, password)
            client = DICOMwebClient(self.service, session=session)
        self.addCleanup(client._session.close)
        return client

    def token(self, signer: Signer | None = None, **changes: Any) -> dict[str, str]:
        now = int(reactor.seconds())
        # Not "alice": carol reads through her role only.
        fields: dict[str, Any] = {
            "sub": "carol",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": now + 300,
            "iat": now,
        }
        payload = claims(**{**fields, "nbf": now, **changes})
        return {"Authorization": "Bearer " + (signer or self.signer).token(payload)}

    async def test_dicomweb_client_with_basic_credentials(self) -> None:
        alice = self.client("alice", "wonderland")
        study = generate_uid()
        datasets = [fresh_test_file("CT_small.dcm", study)]
        answer = await threads.deferToThread(
            alice.store_instances, datasets=datasets, study_instance_uid=study
        )
        self.assertNotIn("FailedSOPSequence", answer)
        found = await threads.deferToThread(
            alice.search_for_studies, search_filters={"StudyInstanceUID": study}
        )
        self.assertEqual([s["0020000D"]["Value"] for s in found], [[study]], self.gw.log_tail())
        for name, password, status in ((None, "", 401), ("alice", "wrong", 401), ("bob", "builder", 403)):
            who = self.client(name, password)
            with self.assertRaises(HTTPError) as raised:
                await threads.deferToThread(who.search_for_studies)
            self.assertEqual(raised.exception.response.status_code, status, name)
        bob = self.client("bob", "builder")
        with self.assertRaises(HTTPError) as raised:
            await threads.deferToThread(bob.store_instances, datasets=[fresh_test_file("MR_small.dcm")])
        self.assertEqual(raised.exception.response.status_code, 403)

    async def test_statuses_challenges_and_aets_over_tcp(self) -> None:
        response = await self.gw.get("/aets/" + self.orthanc.aet + "/studies")
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.headers.getRawHeaders("WWW-Authenticate"),
            ['Basic realm="dicomrst", charset="UTF-8"', 'Bearer realm="dicomrst"'],
        )
        self.assertEqual(response.header("X-Content-Type-Options"), "nosniff")
        response = await self.gw.get("/aets", headers=basic_header("bob", "builder"))
        self.assertEqual(response.json(), [])
        response = await self.gw.get("/aets", headers=basic_header("alice", "wonderland"))
        self.assertEqual(response.json(), [self.orthanc.aet])
        response = await self.gw.request("OPTIONS", "/aets", headers={"Origin": "https://viewer.test"})
        self.assertEqual(response.code, 204)

    async def test_bearer_tokens_with_keys_fetched_over_http(self) -> None:
        path = f"/aets/{self.orthanc.aet}/studies"
        response = await self.gw.get(path, headers=self.token())  # the radiology role may read
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(self.provider.requests, 1)
        response = await self.gw.get("/aets", headers=self.token(realm_access={"roles": []}))
        self.assertEqual(response.json(), [])
        response = await self.gw.get(path, headers=self.token(exp=1))
        self.assertEqual(response.code, 401)
        self.assertIn('error="invalid_token"', response.headers.getRawHeaders("WWW-Authenticate")[0])
        # The provider rotates its key: a token naming the new kid makes the gateway fetch again.
        rotated = Signer("EC", kid="k2")
        self.provider.keys = [self.signer.jwk(), rotated.jwk()]
        response = await self.gw.get(path, headers=self.token(rotated))
        self.assertEqual(response.code, 200, self.gw.log_tail())
        self.assertEqual(self.provider.requests, 2)
        for forged in (self.signer.alg_none(), self.signer.hs256_with_public_key(), self.signer.tampered()):
            response = await self.gw.get(path, headers={"Authorization": "Bearer " + forged})
            self.assertEqual(response.code, 401, forged)
