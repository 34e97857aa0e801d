from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.core import config
from agent.core.config import ConfigError, Duration

ROOT = Path(__file__).resolve().parents[3]
MINIMAL = '[node]\nname = "node1"\n[etcd]\nscope = "demo"\n'


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(("text", "dur"), [("30s", 30), ("500ms", 0.5), ("2h", 7200), ("1h30m", 5400), ("1d", 86400)])
def test_duration_strings_parse_to_seconds(text: str, dur: float) -> None:
    assert Duration.parse(text) == pytest.approx(dur)


BAD = [
    ('[node]\nname = "n"\n[etcd]\nscope = "s"\nbogus = 1\n', "etcd.bogus", "unknown key"),
    ('[node]\nname = "n"\n', "etcd", "required key is missing"),
    ('[etcd]\nscope = "s"\n', "node", "required key is missing"),
    (MINIMAL + '[patroni]\npoll_interval = "5 parsecs"\n', "patroni.poll_interval", "invalid duration"),
    (MINIMAL + '[patroni]\npoll_interval = true\n', "patroni.poll_interval", "duration"),
    (MINIMAL + '[patroni]\npoll_interval = 5\n', "patroni.poll_interval",
     'expected a duration string like "30s", got an integer'),
    (MINIMAL + '[postgres]\nport = "5432"\n', "postgres.port", "expected an integer"),
    (MINIMAL + '[postgres]\nport = 70000\n', "postgres.port", "out of range"),
    (MINIMAL + '[http]\nlisten = "9188"\n', "http.listen", "host:port"),
    (MINIMAL + '[sampler]\nsource = "pg_stat_activity"\n', "sampler.source", "must be one of"),
    (MINIMAL + '[sampler]\nlabels = ["datname", "query"]\n', "sampler.labels[1]", "unknown label"),
    (MINIMAL + '[[repack.windows]]\ncron = "0 2 * * *"\nduration = "2h"\n'
     '[[repack.windows]]\ncron = "61 * * * *"\nduration = "1h"\n',
     "repack.windows[1].cron", 'invalid cron expression "61 * * * *"'),
    (MINIMAL + '[[repack.windows]]\ncron = "0 2 * * *"\n', "repack.windows[0].duration", "required key"),
    (MINIMAL + '[[repack.windows]]\ncron = "0 2 * * *"\nduration = "1h"\ntimezone = "Mars/Olympus"\n',
     "repack.windows[0].timezone", "unknown time zone"),
    (MINIMAL + '[watchdog]\ndevice = "/dev/watchdog"\n', "watchdog.device", "Patroni"),
    (MINIMAL + '[watchdog]\ndevice = "/nonexistent/watchdog1"\n', "watchdog.device",
     "PrivateDevices=no and DeviceAllow=/nonexistent/watchdog1 rw"),
    (MINIMAL + '[[hooks]]\ncommand = ["vip-up"]\n', "hooks[0].command[0]", "absolute path"),
    (MINIMAL + '[etcd]\n', "", "not valid TOML"),
    (MINIMAL + '[http]\nbasic_auth_users = { ops = "plaintext" }\n', "http.basic_auth_users.ops", "bcrypt"),
    (MINIMAL + '[logging]\nlevel = "verbose"\n', "logging.level", "must be one of"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), BAD)
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as ei:
        config.load(write(tmp_path, text))
    assert ei.value.key == key
    assert fragment in str(ei.value)


@pytest.mark.parametrize(("text", "key", "fragment"), BAD[:13])
def test_check_config_exits_78_naming_the_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    p = write(tmp_path, text)
    r = subprocess.run([sys.executable, "-m", "agent", "-c", str(p), "check-config"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 78
    assert key in r.stderr and fragment in r.stderr


def test_example_config_is_valid() -> None:
    r = subprocess.run([sys.executable, "-m", "agent", "-c", str(ROOT / "config/agent.example.toml"),
                        "check-config"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_example_config_mentions_every_key() -> None:
    text = (ROOT / "config/agent.example.toml").read_text()
    ref = config.reference_markdown()
    keys = [line.split("`")[1] for line in ref.splitlines() if line.startswith("| `")]
    missing = [k for k in keys if f"{k} =" not in text and f"# {k} =" not in text]
    assert missing == []


def test_reference_doc_matches_schema() -> None:
    assert (ROOT / "docs/configuration.md").read_text() == config.reference_markdown()


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    os.chmod(secret, 0o644)
    p = write(tmp_path, MINIMAL + f'[postgres]\npassword_file = "{secret}"\n')
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert ei.value.key == "postgres.password_file"
    os.chmod(secret, 0o600)
    cfg = config.load(p)
    assert "hunter2" not in repr(cfg)
    assert repr(config.read_secret(str(secret))) == "Secret('***')"


def test_relative_secret_is_read_from_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pgpw").write_text("s3cret")
    os.chmod(tmp_path / "pgpw", 0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert config.read_secret("pgpw").reveal() == "s3cret"


def test_watchdog_device_must_be_a_character_device(tmp_path: Path) -> None:
    plain = tmp_path / "watchdog1"
    plain.write_bytes(b"")
    with pytest.raises(ConfigError, match="not a character device") as ei:
        config.load(write(tmp_path, MINIMAL + f'[watchdog]\ndevice = "{plain}"\n'))
    assert ei.value.key == "watchdog.device"
    config.load(write(tmp_path, MINIMAL + '[watchdog]\ndevice = "/dev/null"\n'))


def test_bare_number_is_no_duration(tmp_path: Path) -> None:
    for value in ("5", "0.5", "0"):
        with pytest.raises(ConfigError, match="expected a duration string") as ei:
            config.load(write(tmp_path, MINIMAL + f"watch_deadline = {value}\n"))  # MINIMAL ends in [etcd]
        assert ei.value.key == "etcd.watch_deadline"


def test_relative_file_names_are_taken_from_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "pgpass").write_text("s3cret\n")
    (conf_dir / "pgpass").chmod(0o600)
    p = conf_dir / "agent.toml"
    p.write_text(MINIMAL + '[postgres]\npassword_file = "pgpass"\n'
                 '[http]\ntls_cert_file = "tls/cert.pem"\ntls_key_file = "/abs/key.pem"\n')
    # A CLI command run from anywhere else reads the same files the unit does.
    r = subprocess.run([sys.executable, "-m", "agent", "-c", str(p), "check-config"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    cfg = config.load(p)
    assert cfg.postgres.password_file == str(conf_dir / "pgpass")
    assert config.read_secret(cfg.postgres.password_file).reveal() == "s3cret"
    assert cfg.http.tls_cert_file == str(conf_dir / "tls/cert.pem") and cfg.http.tls_key_file == "/abs/key.pem"


def test_relative_secret_under_systemd_stays_a_credential_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pgpass").write_text("from-credential\n")
    (creds / "pgpass").chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = config.load(write(tmp_path, MINIMAL + '[postgres]\npassword_file = "pgpass"\n'))
    assert cfg.postgres.password_file == "pgpass"
    assert config.read_secret(cfg.postgres.password_file).reveal() == "from-credential"


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.toml")


def test_example_file_is_the_generated_one() -> None:
    assert (ROOT / "config/agent.example.toml").read_text() == config.example_toml()


@pytest.mark.parametrize(("section", "extra"), [("etcd", 'username = "agent"\npassword_file'),
                                                ("postgres", "password_file"), ("patroni", "key_file")])
def test_a_secret_file_readable_by_others_is_refused_naming_its_key(tmp_path: Path, section: str, extra: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("pw\n")
    secret.chmod(0o644)
    text = MINIMAL.replace("[etcd]\n", "[etcd]\n" + (f'{extra} = "secret"\n' if section == "etcd" else ""))
    if section != "etcd":
        text += f'[{section}]\n{extra} = "secret"\n'
    with pytest.raises(ConfigError) as ei:
        config.load(write(tmp_path, text))
    assert ei.value.key == f"{section}.{extra.rpartition(chr(10))[2]}" and "readable by others" in str(ei.value)
    secret.chmod(0o600)
    config.load(write(tmp_path, text))
