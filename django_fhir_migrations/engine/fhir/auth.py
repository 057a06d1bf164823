"""Credentials for the FHIR server, as `requests` auth objects set on the one session.

Bearer and basic are static. SMART Backend Services gets an access token with the
client_credentials grant and a private_key_jwt client assertion (RS384 or ES384), finds the
token endpoint in `.well-known/smart-configuration` (or the CapabilityStatement), caches the
token until shortly before it expires and fetches a new one after that or after a 401.
No credential ever reaches a message, a log line or a repr.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import requests
from requests.auth import AuthBase

from ..errors import AuthenticationError, ConfigurationError

logger = logging.getLogger("django_fhir_migrations")

SMART_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class _NoAuth(AuthBase):
    """Used for discovery and token requests, which must not carry the FHIR credentials."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


NO_AUTH = _NoAuth()


class BearerAuth(AuthBase):
    def __init__(self, token: str):
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"


class BasicAuth(requests.auth.HTTPBasicAuth):
    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=***)"


class SmartBackendAuth(AuthBase):
    """SMART Backend Services (client_credentials + private_key_jwt)."""

    renew_margin = 30.0  # seconds before expiry at which the token is renewed

    def __init__(self, options: Mapping[str, Any], base_url: str, session: requests.Session,
                 timeout: float):
        self.client_id: str = options["client_id"]
        self.scope: str = options.get("scope", "system/*.*")
        self.token_url: str | None = options.get("token_url")
        self.key_id: str | None = options.get("kid") or options.get("key_id")
        self.algorithm: str | None = options.get("algorithm")
        self._key_pem = _read_key(options)
        self._base_url = base_url.rstrip("/")
        self._session = session
        self._timeout = timeout
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id={self.client_id!r}, key=***)"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.access_token()}"
        return request

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def access_token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at - self.renew_margin:
                self._token, lifetime = self._fetch_token()
                self._expires_at = time.monotonic() + lifetime
                self.tokens_fetched += 1
            return self._token

    # --- token endpoint -------------------------------------------------------------------

    def _discover_token_url(self) -> str:
        if self.token_url:
            return self.token_url
        well_known = f"{self._base_url}/.well-known/smart-configuration"
        try:
            reply = self._session.get(well_known, auth=NO_AUTH, timeout=self._timeout,
                                      headers={"Accept": "application/json"})
            if reply.ok:
                url = reply.json().get("token_endpoint")
                if url:
                    self.token_url = url
                    return url
            reply = self._session.get(f"{self._base_url}/metadata", auth=NO_AUTH,
                                      timeout=self._timeout,
                                      headers={"Accept": "application/fhir+json"})
            if reply.ok:
                for rest in reply.json().get("rest", []):
                    for ext in rest.get("security", {}).get("extension", []):
                        if ext.get("url") == SMART_OAUTH_URIS:
                            for sub in ext.get("extension", []):
                                if sub.get("url") == "token" and sub.get("valueUri"):
                                    self.token_url = sub["valueUri"]
                                    return self.token_url
        except (requests.RequestException, ValueError) as exc:
            raise AuthenticationError(
                f"SMART backend auth: could not discover the token endpoint of {self._base_url} "
                f"({type(exc).__name__}). Set AUTH['token_url'].",
                url=well_known,
            ) from None
        raise AuthenticationError(
            f"SMART backend auth: {self._base_url} publishes no token endpoint in "
            ".well-known/smart-configuration or its CapabilityStatement. Set AUTH['token_url'].",
            url=well_known,
        )

    def _fetch_token(self) -> tuple[str, float]:
        token_url = self._discover_token_url()
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self._assertion(token_url),
        }
        try:
            reply = self._session.post(token_url, data=form, auth=NO_AUTH, timeout=self._timeout,
                                       headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise AuthenticationError(
                f"SMART backend auth: the token endpoint {token_url} could not be reached "
                f"({type(exc).__name__}).",
                url=token_url,
            ) from None
        body: dict[str, Any] = {}
        try:
            body = reply.json()
        except ValueError:
            pass
        if not reply.ok or "access_token" not in body:
            reason = body.get("error_description") or body.get("error") or reply.reason
            raise AuthenticationError(
                f"SMART backend auth: the token endpoint {token_url} refused client "
                f"{self.client_id!r} ({reply.status_code} {reason}). Check that the server has "
                "this client's public key and that AUTH names the matching private key and kid.",
                url=token_url,
                status=reply.status_code,
            )
        lifetime = float(body.get("expires_in") or 300)
        logger.info("Obtained a SMART backend access token for client %s, valid %.0fs",
                    self.client_id, lifetime)
        return body["access_token"], lifetime

    def _assertion(self, token_url: str) -> str:
        try:
            import jwt
            from cryptography.hazmat.primitives.asymmetric import ec, rsa
            from cryptography.hazmat.primitives.serialization import load_pem_private_key
        except ImportError:
            raise ConfigurationError(
                "AUTH", "SMART backend auth needs PyJWT and cryptography: "
                "pip install 'django-fhir-migrations[smart]'."
            ) from None
        try:
            key = load_pem_private_key(self._key_pem, password=None)
        except (ValueError, TypeError):
            raise ConfigurationError(
                "AUTH", "the SMART private key is not a readable unencrypted PEM private key."
            ) from None
        if self.algorithm:
            algorithm = self.algorithm
        elif isinstance(key, rsa.RSAPrivateKey):
            algorithm = "RS384"
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            algorithm = "ES384"
        else:
            raise ConfigurationError("AUTH", "the SMART private key must be an RSA or EC key.")
        if algorithm not in ("RS384", "ES384"):
            raise ConfigurationError("AUTH", f"algorithm {algorithm!r} is not RS384 or ES384.")
        now = int(time.time())
        claims = {
            "iss": self.client_id, "sub": self.client_id, "aud": token_url,
            "exp": now + 300, "iat": now, "jti": uuid.uuid4().hex,
        }
        headers = {"typ": "JWT"}
        if self.key_id:
            headers["kid"] = self.key_id
        return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _read_key(options: Mapping[str, Any]) -> bytes:
    if options.get("private_key"):
        key = options["private_key"]
        return key.encode() if isinstance(key, str) else bytes(key)
    path = options["private_key_file"]
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigurationError(
            "AUTH['private_key_file']", f"cannot read {path!r} ({exc.strerror})."
        ) from None


def build_auth(options: Mapping[str, Any] | None, base_url: str, session: requests.Session,
               timeout: float) -> AuthBase | None:
    if not options:
        return None
    kind = options["type"]
    if kind == "bearer":
        return BearerAuth(options["token"])
    if kind == "basic":
        return BasicAuth(options["username"], options["password"])
    return SmartBackendAuth(options, base_url, session, timeout)
