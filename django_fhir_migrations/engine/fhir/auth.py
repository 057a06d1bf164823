"""Credentials for the FHIR server, as `requests` auth objects set on the one session.

Bearer and basic are static. SMART Backend Services (the `client_credentials` grant with a
`private_key_jwt` client assertion, as HL7's SMART App Launch "Backend Services" and
"client-confidential-asymmetric" pages describe) gets short-lived access tokens itself:

* the token endpoint comes from AUTH['token_url'], else `<base>/.well-known/smart-configuration`,
  else the CapabilityStatement's `oauth-uris` security extension;
* each token request carries a fresh assertion signed RS384 (RSA key) or ES384 (P-384 EC key):
  iss = sub = client_id, aud = the token endpoint, exp four minutes ahead (the spec allows at
  most five; the minute left over absorbs clock skew), a unique jti, `kid` (and `jku` if set)
  in the header;
* the token is cached and renewed shortly before `expires_in` runs out, and dropped after a 401
  so the connection can fetch exactly one new one and resend.

Discovery and token requests are sent with `NO_AUTH`: the FHIR credentials never go to them.
The private key is read and checked when the connection is built (a bad key is a configuration
error before any request). No credential ever reaches a message, a log line or a repr; every
auth object lists its live secrets in `secrets()` so error texts can be scrubbed of them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.auth import AuthBase

from ..errors import AuthenticationError, ConfigurationError, ServerUnreachableError
from ..redaction import printable, register_secret
from .retries import RetryPolicy
from .session import is_loopback, origin_of

logger = logging.getLogger("django_fhir_migrations")

SMART_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_SCOPE = "system/*.*"
ASSERTION_LIFETIME = 240  # seconds; the spec caps exp at five minutes from now
DEFAULT_TOKEN_LIFETIME = 300.0  # when the token response has no (usable) expires_in
MAX_RENEW_MARGIN = 30.0
SETTING = "AUTH"

OPTIONS = {
    "bearer": {"type", "token"},
    "basic": {"type", "username", "password"},
    "smart-backend": {"type", "client_id", "private_key", "private_key_file", "kid", "key_id",
                      "algorithm", "scope", "token_url", "jku"},
}
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: anything else breaks the header


class _NoAuth(AuthBase):
    """Used for discovery and token requests, which must not carry the FHIR credentials.

    Passing it per request overrides the session's auth (and keeps `.netrc` out of it too).
    """

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers.pop("Authorization", None)
        return request

    def __repr__(self) -> str:
        return "NO_AUTH"


NO_AUTH = _NoAuth()


class OriginBoundAuth(AuthBase):
    """Credentials that are attached only to requests for BASE_URL's origin.

    A `next` link, a Location or a script's own URL may point anywhere; whatever the session is
    asked to send there goes without our `Authorization` header (scheme, host and port must all
    match the base URL's).
    """

    def __init__(self, base_url: str):
        self.origin = origin_of(base_url)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if origin_of(request.url or "") == self.origin:
            request.headers["Authorization"] = self.header()
        else:
            request.headers.pop("Authorization", None)
        return request

    def header(self) -> str:
        raise NotImplementedError

    def secrets(self) -> tuple[str, ...]:
        return ()


class BearerAuth(OriginBoundAuth):
    """A static bearer token (e.g. an API gateway key or a long-lived service token)."""

    def __init__(self, token: str, base_url: str):
        super().__init__(base_url)
        self._token = token
        register_secret(token)

    def header(self) -> str:
        return f"Bearer {self._token}"

    def __repr__(self) -> str:
        return "BearerAuth(token=***)"

    def secrets(self) -> tuple[str, ...]:
        return (self._token,)


class BasicAuth(OriginBoundAuth):
    """HTTP basic; the username may be shown, the password never."""

    def __init__(self, username: str, password: str, base_url: str):
        super().__init__(base_url)
        self.username = username
        self.password = password
        self._encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
        register_secret(password, self._encoded)

    def header(self) -> str:
        return f"Basic {self._encoded}"

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=***)"

    def secrets(self) -> tuple[str, ...]:
        return (str(self.password), self._encoded)


class SmartBackendAuth(OriginBoundAuth):
    """SMART Backend Services: client_credentials + private_key_jwt, token cached and renewed."""

    def __init__(self, options: Mapping[str, Any], base_url: str, session: requests.Session,
                 timeout: float, *, retries: int = 2):
        super().__init__(base_url)
        self.client_id = str(options["client_id"])
        self.scope = str(options.get("scope") or DEFAULT_SCOPE)
        self.jku: str | None = options.get("jku") or None
        self._base_url = base_url.rstrip("/")
        self.token_url: str | None = None
        if options.get("token_url"):
            self.token_url = _token_url(str(options["token_url"]), self._base_url,
                                        f"{SETTING}['token_url']")
        self._key = load_private_key(options)
        self.algorithm = _algorithm_for(self._key, options.get("algorithm"))
        self.key_id = str(options.get("kid") or options.get("key_id") or jwk_thumbprint(self._key))
        self._session = session
        self._timeout = timeout
        self._policy = RetryPolicy(retries=retries)
        self._token: str | None = None
        self._renew_at = 0.0
        self._issued: list[str] = []  # every token this process received, for scrubbing
        self._lock = threading.Lock()
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return (f"SmartBackendAuth(client_id={self.client_id!r}, kid={self.key_id!r}, "
                f"algorithm={self.algorithm!r}, key=***)")

    def header(self) -> str:
        return f"Bearer {self.access_token()}"

    def secrets(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._issued)

    def invalidate(self, refused_header: str | None = None) -> None:
        """Forget the cached token after the server refused it.

        With `refused_header` (the Authorization header of the refused request), a token
        that another thread has already renewed is kept: one 401 costs one renewal.
        """
        with self._lock:
            if refused_header is None or refused_header == f"Bearer {self._token}":
                self._token = None

    def access_token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                token, lifetime, asked_at = self._fetch_token()
                # Count the lifetime from before the request was sent, and renew a little
                # early (a tenth of it, at most 30 s) so no request carries a dying token.
                self._renew_at = asked_at + lifetime - min(MAX_RENEW_MARGIN, lifetime / 10)
                self._token = token
                register_secret(token)
                self._issued.append(token)
                del self._issued[:-20]
                self.tokens_fetched += 1
            return self._token

    # --- token endpoint -------------------------------------------------------------------

    def token_endpoint(self) -> str:
        """AUTH['token_url'], else discovered once (.well-known, then the CapabilityStatement)."""
        if self.token_url:
            return self.token_url
        tried: list[str] = []
        well_known = f"{self._base_url}/.well-known/smart-configuration"
        config = self._get_json(well_known, "application/json", tried)
        url = config.get("token_endpoint") if config else None
        if url and isinstance(url, str) and config is not None:
            _warn_on_unsupported(config, self.algorithm, well_known)
        else:
            if config is not None:
                tried.append(f"{well_known} has no token_endpoint")
            metadata = f"{self._base_url}/metadata"
            capability = self._get_json(metadata, "application/fhir+json", tried)
            url = _token_url_from_capability(capability) if capability else None
            if capability is not None and not url:
                tried.append(f"{metadata} has no oauth-uris 'token' extension")
        if not url:
            raise AuthenticationError(
                f"SMART backend auth for client {self.client_id!r}: {self._base_url} publishes no "
                f"token endpoint ({'; '.join(tried)}). Set AUTH['token_url'] to the "
                "authorization server's token URL.",
                url=well_known,
            )
        self.token_url = _token_url(url, self._base_url, "the discovered token_endpoint")
        logger.debug("SMART token endpoint of %s: %s", self._base_url, self.token_url)
        return self.token_url

    def _get_json(self, url: str, accept: str, tried: list[str]) -> dict[str, Any] | None:
        """GET a discovery document without credentials; None (and a note) if it is not there."""
        reply = self._send("GET", url, headers={"Accept": accept})
        if not reply.ok:
            tried.append(f"GET {url} answered {reply.status_code}")
            return None
        try:
            body = reply.json()
        except ValueError:
            tried.append(f"GET {url} did not return JSON")
            return None
        if not isinstance(body, dict):
            tried.append(f"GET {url} did not return a JSON object")
            return None
        return body

    def _send(self, method: str, url: str, *, data_factory: Callable[[], dict[str, str]] | None = None,
              headers: Mapping[str, str]) -> requests.Response:
        """One discovery/token request, never with the FHIR credentials, retried when safe.

        A token request is safe to repeat: each attempt carries a new assertion (new jti).
        """
        attempt = 0
        while True:
            data = data_factory() if data_factory else None
            try:
                reply = self._session.request(method, url, data=data, headers=dict(headers),
                                              auth=NO_AUTH, timeout=self._timeout,
                                              allow_redirects=False)
            except requests.RequestException as exc:
                if attempt < self._policy.retries and self._policy.retry_exception(exc, True):
                    time.sleep(self._policy.delay(attempt))
                    attempt += 1
                    continue
                raise _unreachable(url, exc, self.client_id) from None
            if attempt < self._policy.retries and (
                self._policy.retry_status(reply.status_code, True) or reply.status_code == 500
            ):
                wait = self._policy.delay(attempt, reply)
                logger.warning("%s %s answered %s; retrying in %.1fs", method, url,
                               reply.status_code, wait)
                time.sleep(wait)
                attempt += 1
                continue
            return reply

    def _fetch_token(self) -> tuple[str, float, float]:
        token_url = self.token_endpoint()
        asked_at = time.monotonic()

        def form() -> dict[str, str]:
            return {
                "grant_type": "client_credentials",
                "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.assertion(token_url),
            }

        reply = self._send("POST", token_url, data_factory=form,
                           headers={"Accept": "application/json"})
        body: Any = None
        try:
            body = reply.json()
        except ValueError:
            pass
        if not isinstance(body, dict):
            body = {}
        token = body.get("access_token")
        if not reply.ok or not isinstance(token, str) or not token:
            raise AuthenticationError(
                f"SMART backend auth: the token endpoint {token_url} refused client "
                f"{self.client_id!r} ({_refusal(reply, body)}). Check that the authorization "
                f"server has this client's public key registered (kid {self.key_id!r}, "
                f"{self.algorithm}), that AUTH['private_key_file'] / AUTH['private_key'] is the "
                f"matching private key, and that scope {self.scope!r} is allowed.",
                url=token_url,
                status=reply.status_code,
            )
        token_type = str(body.get("token_type") or "bearer")
        if token_type.lower() != "bearer":
            raise AuthenticationError(
                f"SMART backend auth: the token endpoint {token_url} issued a {token_type!r} "
                "token; only bearer tokens are supported.",
                url=token_url, status=reply.status_code,
            )
        lifetime = _lifetime(body.get("expires_in"))
        logger.info("Obtained a SMART backend access token for client %s (scope %s), valid %.0fs",
                    self.client_id, body.get("scope") or self.scope, lifetime)
        return token, lifetime, asked_at

    def assertion(self, token_url: str) -> str:
        """A fresh signed client assertion (RFC 7523) for one token request."""
        import jwt

        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "exp": now + ASSERTION_LIFETIME,
            "jti": uuid.uuid4().hex,
        }
        headers = {"typ": "JWT", "kid": self.key_id}
        if self.jku:
            headers["jku"] = self.jku
        signed = jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)
        register_secret(signed)
        return signed


# --- keys -------------------------------------------------------------------------------


def load_private_key(options: Mapping[str, Any]) -> Any:
    """Read and parse the PEM private key named by AUTH; ConfigurationError if unusable."""
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError:
        raise ConfigurationError(
            SETTING, "auth type 'smart-backend' needs PyJWT and cryptography: "
            "pip install 'django-fhir-migrations[smart]'."
        ) from None
    try:
        import jwt  # noqa: F401  (checked here so a missing PyJWT fails before any request)
    except ImportError:
        raise ConfigurationError(
            SETTING, "auth type 'smart-backend' needs PyJWT: "
            "pip install 'django-fhir-migrations[smart]'."
        ) from None
    if options.get("private_key"):
        raw = options["private_key"]
        pem = raw.encode() if isinstance(raw, str) else bytes(raw)
        setting, where = f"{SETTING}['private_key']", "the private_key value"
    else:
        path = Path(str(options["private_key_file"])).expanduser()
        setting, where = f"{SETTING}['private_key_file']", f"the key file {str(path)!r}"
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                setting, f"cannot read the SMART private key file {str(path)!r} "
                f"({exc.strerror or type(exc).__name__})."
            ) from None
    register_secret(pem.decode("utf-8", errors="ignore").strip())
    try:
        return load_pem_private_key(pem, password=None)
    except TypeError:
        problem = (f"{where} is encrypted with a passphrase, which is not supported; store the "
                   "key unencrypted in a file only the deploying user can read (chmod 600).")
    except (ValueError, UnsupportedAlgorithm):
        if b"PUBLIC KEY" in pem and b"PRIVATE KEY" not in pem:
            problem = (f"{where} holds a public key. AUTH needs the client's private key; the "
                       "authorization server holds the public one.")
        else:
            problem = (f"{where} is not a readable PEM private key (expected a block starting "
                       "with '-----BEGIN PRIVATE KEY-----', '-----BEGIN RSA PRIVATE KEY-----' or "
                       "'-----BEGIN EC PRIVATE KEY-----').")
    raise ConfigurationError(setting, problem)


def _algorithm_for(key: Any, requested: Any) -> str:
    """RS384 for RSA (>= 2048 bits), ES384 for P-384 EC keys: the two the spec names."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = "RS384"
        if key.key_size < 2048:
            raise ConfigurationError(
                SETTING, f"the SMART private key is a {key.key_size}-bit RSA key; use at least "
                "2048 bits."
            )
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = "ES384"
        if not isinstance(key.curve, ec.SECP384R1):
            raise ConfigurationError(
                SETTING, f"the SMART private key is an EC key on curve {key.curve.name}; ES384 "
                "needs a P-384 (secp384r1) key."
            )
    else:
        raise ConfigurationError(
            SETTING, "the SMART private key must be an RSA key (RS384) or a P-384 EC key (ES384)."
        )
    if requested and str(requested).upper() != algorithm:
        raise ConfigurationError(
            f"{SETTING}['algorithm']",
            f"{requested!r} does not fit the private key, which signs {algorithm}. SMART Backend "
            "Services uses RS384 (RSA keys) or ES384 (P-384 EC keys); leave 'algorithm' out to "
            "choose from the key.",
        )
    return algorithm


def _b64url_uint(value: int, length: int | None = None) -> str:
    length = length or max(1, (value.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(value.to_bytes(length, "big")).rstrip(b"=").decode()


def _public_jwk(key: Any) -> dict[str, str]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = key.public_key().public_numbers()
    if isinstance(key, rsa.RSAPrivateKey):
        return {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    size = (key.curve.key_size + 7) // 8
    return {"kty": "EC", "crv": "P-384", "x": _b64url_uint(numbers.x, size),
            "y": _b64url_uint(numbers.y, size)}


def jwk_thumbprint(key: Any) -> str:
    """RFC 7638 thumbprint of the public key: the default kid when AUTH names none."""
    jwk = _public_jwk(key)
    canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def public_jwk_set(options: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """The JWK Set to register with the authorization server for AUTH's private key.

    Same kid and alg as the assertions will carry, so what is registered is what is used.
    """
    key = load_private_key(options)
    algorithm = _algorithm_for(key, options.get("algorithm"))
    kid = str(options.get("kid") or options.get("key_id") or jwk_thumbprint(key))
    return {"keys": [{**_public_jwk(key), "kid": kid, "alg": algorithm, "use": "sig"}]}


# --- helpers ----------------------------------------------------------------------------


def _token_url(url: str, base_url: str, setting: str) -> str:
    """The token endpoint as an absolute URL; https, unless everything is on this machine.

    The client assertion and the access token travel to and from it, so plain http is only
    accepted when the FHIR server itself is plain http on loopback (a local test set-up) and the
    token endpoint is on loopback too.
    """
    absolute = urljoin(base_url + "/", url.strip())
    parts = urlsplit(absolute)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(setting, f"{printable(url)!r} is not an http(s) URL of a token endpoint.")
    if parts.scheme == "http":
        base_scheme, base_host, _ = origin_of(base_url)
        if not (base_scheme == "http" and is_loopback(base_host) and is_loopback(parts.hostname or "")):
            raise ConfigurationError(
                setting, f"the SMART token endpoint {printable(absolute)!r} is plain http. Access "
                "tokens and client assertions must travel over https; plain http is accepted only "
                "when BASE_URL is http on loopback and the token endpoint is on loopback too."
            )
    return absolute


def _token_url_from_capability(capability: Mapping[str, Any]) -> str | None:
    for rest in capability.get("rest") or []:
        for ext in ((rest or {}).get("security") or {}).get("extension") or []:
            if ext.get("url") != SMART_OAUTH_URIS:
                continue
            for sub in ext.get("extension") or []:
                if sub.get("url") == "token" and isinstance(sub.get("valueUri"), str):
                    return sub["valueUri"]
    return None


def _warn_on_unsupported(config: Mapping[str, Any], algorithm: str, where: str) -> None:
    """Say early what the server's own configuration says will fail, without failing on it."""
    methods = config.get("token_endpoint_auth_methods_supported")
    if isinstance(methods, list) and methods and "private_key_jwt" not in methods:
        logger.warning("%s does not list private_key_jwt among its token endpoint auth methods "
                       "(%s); the token request may be refused", where, ", ".join(map(str, methods)))
    algorithms = config.get("token_endpoint_auth_signing_alg_values_supported")
    if isinstance(algorithms, list) and algorithms and algorithm not in algorithms:
        logger.warning("%s does not list %s among its signing algorithms (%s); the token "
                       "request may be refused", where, algorithm, ", ".join(map(str, algorithms)))


def _lifetime(expires_in: Any) -> float:
    try:
        lifetime = float(expires_in)
    except (TypeError, ValueError):
        return DEFAULT_TOKEN_LIFETIME
    return lifetime if lifetime > 0 else DEFAULT_TOKEN_LIFETIME


def _refusal(reply: requests.Response, body: Mapping[str, Any]) -> str:
    """The server's own reason (OAuth error and description), short and printable."""
    if 300 <= reply.status_code < 400:
        return f"{reply.status_code} redirect to {reply.headers.get('Location', '?')}; use the final URL"
    parts = [str(reply.status_code)]
    error = body.get("error")
    if isinstance(error, str) and error:
        parts.append(error[:100])
    description = body.get("error_description")
    if isinstance(description, str) and description:
        parts.append(f"- {description[:300]}")
    elif not error:
        parts.append(reply.reason or "")
    if reply.ok:
        parts.append("- the response has no access_token")
    return " ".join(p for p in parts if p)


def _unreachable(url: str, exc: requests.RequestException, client_id: str) -> ServerUnreachableError:
    if isinstance(exc, requests.exceptions.SSLError):
        reason = "TLS verification failed; fix the certificate or set VERIFY_TLS"
    elif isinstance(exc, requests.Timeout):
        reason = "timed out; raise TIMEOUT if the server is slow"
    else:
        reason = "connection failed; check BASE_URL / AUTH['token_url'] and that the server runs"
    return ServerUnreachableError(
        f"SMART backend auth for client {client_id!r}: cannot reach {url} ({reason}).", url=url
    )


def _check_token(token: Any, setting: str) -> str:
    token = str(token).strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()  # a pasted "Bearer abc" header value
    if not token or not _TOKEN_CHARS.match(token):
        raise ConfigurationError(
            setting, "the bearer token is empty or contains spaces, line breaks or non-ASCII "
            "characters; give the token alone, as the server issued it."
        )
    return token


def build_auth(options: Mapping[str, Any] | None, base_url: str, session: requests.Session,
               timeout: float, *, retries: int = 2) -> AuthBase | None:
    """The auth object for validated AUTH settings (see config._validate_auth), or None."""
    if not options:
        return None
    kind = options["type"]
    unknown = sorted(set(options) - OPTIONS.get(kind, set()))
    if unknown:
        raise ConfigurationError(
            SETTING, f"unknown key(s) {', '.join(map(repr, unknown))} for auth type {kind!r}; "
            f"known keys: {', '.join(sorted(OPTIONS[kind]))}."
        )
    if kind == "bearer":
        return BearerAuth(_check_token(options["token"], f"{SETTING}['token']"), base_url)
    if kind == "basic":
        username = str(options["username"])
        if ":" in username:
            raise ConfigurationError(f"{SETTING}['username']",
                                     "HTTP basic usernames cannot contain ':'.")
        return BasicAuth(username, str(options["password"]), base_url)
    return SmartBackendAuth(options, base_url, session, timeout, retries=retries)
