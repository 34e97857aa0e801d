"""TLS client contexts for the agent's HTTPS peers (Patroni's REST API): verification on by
default, a private CA and a client certificate when configured; relative paths are looked up in
$CREDENTIALS_DIRECTORY (systemd LoadCredential=)."""

from __future__ import annotations

import ssl

from agent.core.config import ConfigError, PatroniConfig, resolve_secret_path


def patroni_context(cfg: PatroniConfig) -> ssl.SSLContext:
    """Raises ConfigError naming the key of a file that cannot be loaded."""
    try:
        ctx = ssl.create_default_context(cafile=str(resolve_secret_path(cfg.ca_file)) if cfg.ca_file else None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("patroni.ca_file", f"cannot load {cfg.ca_file}: {e}") from None
    if cfg.cert_file:
        if not cfg.key_file:
            raise ConfigError("patroni.key_file", "required with patroni.cert_file")
        try:
            ctx.load_cert_chain(resolve_secret_path(cfg.cert_file), resolve_secret_path(cfg.key_file))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError("patroni.cert_file", f"cannot load {cfg.cert_file} / {cfg.key_file}: {e}") from None
    return ctx
