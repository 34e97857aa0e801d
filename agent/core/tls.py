"""TLS client contexts for the agent's HTTPS peers (Patroni's REST API, etcd): verification on by
default, a private CA and a client certificate when configured; relative paths are looked up in
$CREDENTIALS_DIRECTORY (systemd LoadCredential=)."""

from __future__ import annotations

import functools
import ssl

from agent.core.config import ConfigError, PatroniConfig, resolve_secret_path


@functools.cache
def _system_context() -> ssl.SSLContext:
    """One context for every peer verified against the system's CAs alone: each context holds its
    own parsed copy of the CA bundle (~0.8 MiB)."""
    return ssl.create_default_context()


def client_context(ca_file: str, cert_file: str, key_file: str, section: str) -> ssl.SSLContext:
    """Raises ConfigError naming `<section>.<key>` of a file that cannot be loaded."""
    if not ca_file and not cert_file:
        return _system_context()
    try:
        ctx = ssl.create_default_context(cafile=str(resolve_secret_path(ca_file)) if ca_file else None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"{section}.ca_file", f"cannot load {ca_file}: {e}") from None
    if cert_file:
        if not key_file:
            raise ConfigError(f"{section}.key_file", f"required with {section}.cert_file")
        try:
            ctx.load_cert_chain(resolve_secret_path(cert_file), resolve_secret_path(key_file))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"{section}.cert_file", f"cannot load {cert_file} / {key_file}: {e}") from None
    return ctx


def patroni_context(cfg: PatroniConfig) -> ssl.SSLContext:
    return client_context(cfg.ca_file, cfg.cert_file, cfg.key_file, "patroni")
