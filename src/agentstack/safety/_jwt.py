"""Callers identified by a JWT from a team's identity provider, instead of (or beside) agentstack's own keys.

A token in `Authorization: Bearer` or `x-api-key` that looks like a JWT is verified with PyJWT (the `jwt` extra):
its signature (HS256 with `AGENTSTACK_JWT_SECRET`, or RS256/ES256 with the keys of `AGENTSTACK_JWT_JWKS_FILE`,
chosen by the token's `kid`), its expiry (`exp` is required; 30 s of clock skew allowed), and, when configured,
its audience (`aud`) and issuer (`iss`). Its `sub` becomes the caller: `jwt:<sub>` owns the threads it makes,
as a key id does. Optional claims narrow it as a key's options do: `agentstack_assistants` (a list of graphs),
`agentstack_read_only`, `agentstack_admin`. A server that verifies tokens is never open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentstack._optional import require
from agentstack.config import Settings
from agentstack.errors import ConfigError
from agentstack.safety._auth import Caller, Refused

__all__ = ["JwtVerifier"]


class JwtVerifier:
    def __init__(
        self,
        *,
        secret: str | None = None,
        jwks_file: Path | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 30.0,
    ) -> None:
        self._jwt = require("jwt", extra="jwt", feature="verifying JWTs (AGENTSTACK_JWT_SECRET / _JWKS_FILE)")
        if secret is None and jwks_file is None:
            raise ConfigError(
                "a JWT verifier needs a secret or a JWKS file",
                fix="set AGENTSTACK_JWT_SECRET or AGENTSTACK_JWT_JWKS_FILE",
            )
        self.secret, self.audience, self.issuer, self.leeway_s = secret, audience, issuer, leeway_s
        self._jwks = None
        if jwks_file is not None:
            try:
                self._jwks = self._jwt.PyJWKSet.from_json(Path(jwks_file).read_text())
            except (OSError, self._jwt.PyJWKSetError, ValueError) as exc:
                raise ConfigError(
                    f"the JWKS file {jwks_file} cannot be read as a key set: {exc}",
                    fix="point AGENTSTACK_JWT_JWKS_FILE at your identity provider's JWKS (JSON with a 'keys' list)",
                ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier | None:
        """The verifier the settings ask for, or None when they name no secret and no key set."""
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        if secret is None and settings.jwt_jwks_file is None:
            return None
        return cls(
            secret=secret, jwks_file=settings.jwt_jwks_file, audience=settings.jwt_audience, issuer=settings.jwt_issuer
        )

    def caller(self, token: str) -> Caller:
        """The caller the token names; `Refused` (401) naming what is wrong with it (never the token)."""
        jwt = self._jwt
        try:
            key, algorithms = self._key(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Refused(401, "the token has expired") from None
        except jwt.InvalidAudienceError:
            raise Refused(401, f"the token is not for this server (its aud is not {self.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise Refused(401, f"the token was not issued by {self.issuer!r}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Refused(401, f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise Refused(401, "the token's signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise Refused(401, f"the token is not a valid JWT ({type(exc).__name__})") from None
        assistants = claims.get("agentstack_assistants")
        return Caller(
            key_id=f"jwt:{claims['sub']}",
            name=str(claims.get("name") or claims["sub"]),
            admin=bool(claims.get("agentstack_admin")),
            read_only=bool(claims.get("agentstack_read_only")),
            assistants=tuple(str(a) for a in assistants) if isinstance(assistants, list) else None,
        )

    def _key(self, token: str) -> tuple[Any, list[str]]:
        header = self._jwt.get_unverified_header(token)
        algorithm = header.get("alg")
        if algorithm == "HS256" and self.secret is not None:
            return self.secret, ["HS256"]
        if self._jwks is not None and algorithm in ("RS256", "ES256"):
            kid = header.get("kid")
            keys = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
            if not keys:
                raise Refused(401, f"the token names no key of this server's key set (no key {kid!r})")
            return keys[0], [algorithm]
        raise Refused(401, f"{algorithm} tokens are not accepted here")
