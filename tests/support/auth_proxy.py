"""A test-only authenticating reverse proxy in front of the real HAPI server.

HAPI runs without security; this proxy plays the part of a secured FHIR server and its
SMART authorization server, so the tool's auth can be tested end to end against real data:

- every FHIR request must carry `Authorization`: the configured static bearer token, the
  configured basic user/password, or an unexpired token this proxy issued itself; otherwise
  401 with an OperationOutcome. `/metadata` is public, as on real SMART servers.
- `<base>/.well-known/smart-configuration` names `/auth/token` on this proxy (or answers 404
  with `well_known=False`); with `capability_oauth=True` the CapabilityStatement gets the
  `oauth-uris` security extension pointing there.
- `/auth/token` implements the SMART Backend Services token endpoint: a form POST with
  grant_type=client_credentials, scope and a private_key_jwt client assertion, verified with
  the registered client's PUBLIC key (PyJWT + cryptography): alg RS384/ES384, kid, iss = sub =
  client id, aud = this token URL, exp not passed and at most five minutes ahead, jti never
  seen before. It issues opaque tokens that live `token_lifetime` seconds.
- everything else goes to HAPI, with HAPI's base URL in bodies and headers rewritten to the
  proxy's so paging `next` links and Locations lead back through the proxy.

It counts what it saw (requests, refusals, tokens issued, assertions) for the tests to assert on.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_PATH = "/auth/token"
MAX_ASSERTION_LIFETIME = 300
CLOCK_SKEW = 5
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
              "upgrade", "proxy-authenticate", "proxy-authorization", "content-encoding"}


@dataclass
class Seen:
    """One request the proxy answered."""

    method: str
    path: str
    authorization: str | None  # "bearer", "basic", other scheme, or None
    status: int


@dataclass
class Client:
    """A registered SMART backend client: its public key (PEM) and optionally its kid."""

    public_key_pem: bytes
    kid: str | None = None


@dataclass
class TokenRequest:
    """One call to the token endpoint and what the proxy made of it."""

    form: dict[str, str]
    authorization: str | None
    header: dict[str, Any] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    received_at: float = 0.0
    error: str | None = None


class AuthProxy:
    def __init__(self, upstream: str, *, bearer_token: str | None = None,
                 basic: tuple[str, str] | None = None, clients: dict[str, Client] | None = None,
                 token_lifetime: int = 300, well_known: bool = True,
                 capability_oauth: bool = False):
        self.upstream = upstream.rstrip("/")
        self.base_path = urlsplit(self.upstream).path.rstrip("/")
        self.bearer_token = bearer_token
        self.basic = basic
        self.clients = clients or {}
        self.token_lifetime = token_lifetime
        self.well_known = well_known
        self.capability_oauth = capability_oauth
        self.reject_all_tokens = False  # refuse even tokens it issued (a revoked client)
        self.seen: list[Seen] = []
        self.token_requests: list[TokenRequest] = []
        self.issued: dict[str, float] = {}  # access token -> expiry (monotonic)
        self.issued_tokens: list[str] = []
        self.used_jtis: set[str] = set()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> AuthProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="auth-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def origin(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.origin + self.base_path

    @property
    def token_url(self) -> str:
        return self.origin + TOKEN_PATH

    # --- what the tests look at ---------------------------------------------------------

    @property
    def tokens_issued(self) -> int:
        return len(self.issued_tokens)

    @property
    def rejected(self) -> int:
        """FHIR requests refused with 401."""
        return sum(1 for s in self.seen if s.status == 401 and s.path != TOKEN_PATH)

    def fhir_requests(self) -> list[Seen]:
        """Requests for FHIR resources (not discovery, not the token endpoint)."""
        return [s for s in self.seen if s.path != TOKEN_PATH and "/.well-known/" not in s.path
                and not s.path.endswith("/metadata")]

    def revoke_tokens(self) -> None:
        with self._lock:
            self.issued.clear()

    # --- request handling ---------------------------------------------------------------

    def handle(self, request: _Handler) -> None:
        path = urlsplit(request.path).path
        authorization = request.headers.get("Authorization")
        scheme = authorization.split(" ", 1)[0].lower() if authorization else None
        if path == TOKEN_PATH:
            status, headers, body = self._token(request, authorization)
        elif path == f"{self.base_path}/.well-known/smart-configuration":
            status, headers, body = self._smart_configuration()
        elif not (path == self.base_path or path.startswith(self.base_path + "/")):
            status, headers, body = _json(404, {"error": "not found"})
        elif path == f"{self.base_path}/metadata":
            status, headers, body = self._forward(request, metadata=True)
        elif not self._authorized(authorization):
            status, headers, body = _json(401, {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "login",
                           "diagnostics": "Missing, unknown or expired credentials"}],
            }, {"WWW-Authenticate": 'Bearer realm="fhir", Basic realm="fhir"'})
        else:
            status, headers, body = self._forward(request)
        with self._lock:
            self.seen.append(Seen(request.command, path, scheme, status))
        request.reply(status, headers, body)

    def _authorized(self, authorization: str | None) -> bool:
        if not authorization or " " not in authorization:
            return False
        scheme, value = authorization.split(" ", 1)
        value = value.strip()
        if scheme.lower() == "bearer":
            if self.bearer_token is not None and hmac.compare_digest(value, self.bearer_token):
                return True
            with self._lock:
                expiry = self.issued.get(value)
            return expiry is not None and time.monotonic() < expiry and not self.reject_all_tokens
        if scheme.lower() == "basic" and self.basic is not None:
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return hmac.compare_digest(user, self.basic[0]) and hmac.compare_digest(password, self.basic[1])
        return False

    def _smart_configuration(self) -> tuple[int, dict[str, str], bytes]:
        if not self.well_known:
            return _json(404, {"error": "not found"})
        return _json(200, {
            "token_endpoint": self.token_url,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "scopes_supported": ["system/*.*", "system/*.cruds"],
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        })

    def _token(self, request: _Handler, authorization: str | None) -> tuple[int, dict[str, str], bytes]:
        form = {k: v[0] for k, v in parse_qs(request.body().decode(), keep_blank_values=True).items()}
        record = TokenRequest(form=form, authorization=authorization, received_at=time.time())
        with self._lock:
            self.token_requests.append(record)

        def refuse(error: str, description: str) -> tuple[int, dict[str, str], bytes]:
            record.error = f"{error}: {description}"
            return _json(400, {"error": error, "error_description": description})

        if request.command != "POST":
            return refuse("invalid_request", "use POST")
        if form.get("grant_type") != "client_credentials":
            return refuse("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return refuse("invalid_request", "client_assertion_type must be jwt-bearer")
        if not form.get("scope"):
            return refuse("invalid_scope", "scope is required")
        assertion = form.get("client_assertion", "")
        try:
            record.header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return refuse("invalid_client", "client_assertion is not a JWT")
        algorithm = record.header.get("alg")
        if algorithm not in ("RS384", "ES384"):
            return refuse("invalid_client", f"alg {algorithm!r} is not RS384 or ES384")
        if record.header.get("typ") != "JWT" or not record.header.get("kid"):
            return refuse("invalid_client", "the JWT header needs typ JWT and a kid")
        client_id = unverified.get("iss")
        client = self.clients.get(client_id) if isinstance(client_id, str) else None
        if client is None:
            return refuse("invalid_client", "unknown client")
        if client.kid is not None and record.header["kid"] != client.kid:
            return refuse("invalid_client", "unknown kid for this client")
        key = serialization.load_pem_public_key(client.public_key_pem)
        if (algorithm == "RS384") != isinstance(key, rsa.RSAPublicKey) or (
            algorithm == "ES384" and not isinstance(key, ec.EllipticCurvePublicKey)
        ):
            return refuse("invalid_client", "alg does not match the registered key")
        try:
            claims = jwt.decode(
                assertion, key, algorithms=[algorithm], audience=self.token_url,
                issuer=client_id, leeway=CLOCK_SKEW,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.InvalidSignatureError:
            return refuse("invalid_client", "the signature does not verify with the registered key")
        except jwt.PyJWTError as exc:
            return refuse("invalid_client", f"assertion rejected: {type(exc).__name__}")
        record.claims = claims
        if claims["sub"] != client_id:
            return refuse("invalid_client", "sub must equal iss (the client id)")
        if claims["exp"] > time.time() + MAX_ASSERTION_LIFETIME + CLOCK_SKEW:
            return refuse("invalid_client", "exp is more than five minutes ahead")
        with self._lock:
            if claims["jti"] in self.used_jtis:
                return refuse("invalid_client", "jti was used before")
            self.used_jtis.add(claims["jti"])
            token = secrets.token_urlsafe(32)
            self.issued[token] = time.monotonic() + self.token_lifetime
            self.issued_tokens.append(token)
        return _json(200, {"access_token": token, "token_type": "bearer",
                           "expires_in": self.token_lifetime, "scope": form["scope"]},
                     {"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False
        return session

    def _forward(self, request: _Handler, *, metadata: bool = False
                 ) -> tuple[int, dict[str, str], bytes]:
        upstream_origin = self.upstream[: len(self.upstream) - len(self.base_path)]
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP | {"host", "authorization", "accept-encoding"}}
        headers["Accept-Encoding"] = "identity"
        reply = self._session().request(request.command, upstream_origin + request.path,
                                        headers=headers, data=request.body() or None,
                                        allow_redirects=False, timeout=120)
        body = reply.content
        if metadata and self.capability_oauth and reply.ok:
            statement = json.loads(body)
            for rest in statement.get("rest", []):
                rest["security"] = {
                    "service": [{"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR"}]}],
                    "extension": [{"url": OAUTH_URIS, "extension": [
                        {"url": "token", "valueUri": self.token_url}]}],
                }
            body = json.dumps(statement).encode()
        body = body.replace(self.upstream.encode(), self.base_url.encode())
        out = {k: v.replace(self.upstream, self.base_url) for k, v in reply.headers.items()
               if k.lower() not in HOP_BY_HOP}
        return reply.status_code, out, body


class _Handler(BaseHTTPRequestHandler):
    owner: AuthProxy
    protocol_version = "HTTP/1.1"

    _body = b""

    def body(self) -> bytes:
        return self._body

    def reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _any(self) -> None:
        # One handler serves every request of a keep-alive connection: read each body afresh.
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length else b""
        self.owner.handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


def _json(status: int, body: Any, headers: dict[str, str] | None = None
          ) -> tuple[int, dict[str, str], bytes]:
    content_type = "application/fhir+json" if "resourceType" in body else "application/json"
    return status, {"Content-Type": content_type, **(headers or {})}, json.dumps(body).encode()


# --- keys and fixture helpers ----------------------------------------------------------------


@dataclass
class KeyPair:
    private_pem: bytes
    public_pem: bytes

    @classmethod
    def generate(cls, kind: str) -> KeyPair:
        if kind == "rsa":
            key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif kind == "ec":
            key = ec.generate_private_key(ec.SECP384R1())
        elif kind == "ec-p256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(kind)
        return cls(
            private_pem=key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()),
            public_pem=key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo),
        )

    def secret_fragments(self) -> list[str]:
        """The PEM body lines: any of them appearing anywhere means the key leaked."""
        return [line for line in self.private_pem.decode().splitlines()
                if line and not line.startswith("-----")]


def proxy_starter(upstream: str) -> Iterator[Callable[..., AuthProxy]]:
    """Body of the test modules' `start_proxy` fixture: start(**options) -> a running proxy
    in front of `upstream`; every proxy started is stopped afterwards."""
    started: list[AuthProxy] = []

    def start(**options: Any) -> AuthProxy:
        proxy = AuthProxy(upstream, **options).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
