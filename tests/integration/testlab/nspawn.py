"""A throwaway Debian bookworm machine with the real systemd as PID 1 (systemd-nspawn --boot).

Used by tests that must see the shipped unit under a real service manager (Type=notify, the
watchdog, RestartPreventExitStatus=, the sandbox). The measured recipe is in the shared note
`systemd-in-container.md`; this module is that recipe as a reusable context manager:

    lower = ensure_rootfs()                       # debootstrap once, cached as a tarball
    with Container(lower, binds_ro={...}) as ct:  # boots; ALWAYS powers off and removes cgroups
        ct.systemctl("start", "x.service")
        ct.show("x.service", "ActiveState")       # -> {"ActiveState": "active"}

- The rootfs is built once with `debootstrap --variant=minbase` from the mirror named in the
  host's own apt sources (read at run time, never written anywhere in the repository), trimmed
  and cached as `/var/tmp/pg-node-agent-nspawn-rootfs.tar` (delete it to rebuild). The tarball
  is extracted once into a lower dir that is never written to: every boot uses
  `--volatile=overlay`, so its changes live in a tmpfs and vanish at poweroff.
- Boot: `systemd-nspawn --boot --register=no --keep-unit` (the host has no systemd/D-Bus), in
  cgroup dirs of our own so nspawn's payload/supervisor cgroups stay out of the root, sharing
  the host's network (servers on the host's loopback are reachable from inside).
- Driving: `nsenter -t <container PID 1> -a ...` with a clean environment. Such commands carry
  the host's capabilities and no seccomp filter: fine for systemctl/journalctl, but probes of
  the sandbox must look at the service's own process (its /proc entry, its mount namespace).
- Needs root, writable cgroups and the overlay filesystem; `unavailable_reason()` says why not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from agent.lab.procs import pid_alive, wait_until

SUITE = "bookworm"
# procps: /bin/kill, which the shipped unit's ExecReload= uses (minbase lacks it).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "procps")
HOST_PACKAGES = ("systemd-container", "debootstrap")
CACHE_DIR = Path("/var/tmp")
ROOTFS_TAR = CACHE_DIR / "pg-node-agent-nspawn-rootfs.tar"
LOWER_BASE = CACHE_DIR / "pg-node-agent-nspawn-rootfs.d"
BUILD_LOCK = CACHE_DIR / "pg-node-agent-nspawn-rootfs.lock"
WHEEL_CACHE = CACHE_DIR / "pg-node-agent-nspawn-wheels"
HOSTNAME = "pgna-ct"
CG_PREFIX = "pgna-nspawn-"
CT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}

# What the last ensure_rootfs()/Container.boot() cost, for reports.
TIMINGS: dict[str, float] = {}


class NspawnUnavailable(RuntimeError):
    """systemd-nspawn cannot run here; the message says why (tests skip with it)."""


def _run(
    argv: Sequence[str], *, timeout: float, log: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(argv)}\n{r.stdout}{r.stderr}rc={r.returncode}\n")
    return r


# --------------------------------------------------------------------------- host checks


def cgroup_roots() -> list[Path]:
    """The hierarchies nspawn puts its payload in: cgroup2 alone, or hybrid name=systemd + unified."""

    def fstype(p: str) -> str:
        r = subprocess.run(["stat", "-f", "-c", "%T", p], capture_output=True, text=True, check=False)
        return r.stdout.strip()

    if fstype("/sys/fs/cgroup") == "cgroup2fs":
        return [Path("/sys/fs/cgroup")]
    roots = []
    if fstype("/sys/fs/cgroup/systemd") == "cgroupfs":
        roots.append(Path("/sys/fs/cgroup/systemd"))
    if fstype("/sys/fs/cgroup/unified") == "cgroup2fs":
        roots.append(Path("/sys/fs/cgroup/unified"))
    return roots


def unavailable_reason() -> str | None:
    """Why a container cannot be booted here (before installing anything), or None."""
    if not Path("/proc/self/ns/pid").exists():
        return "not Linux"
    if os.geteuid() != 0:
        return "systemd-nspawn needs root"
    caps = next(
        (
            ln.split()[1]
            for ln in Path("/proc/self/status").read_text().splitlines()
            if ln.startswith("CapEff:")
        ),
        "0",
    )
    if not int(caps, 16) & (1 << 21):
        return "no CAP_SYS_ADMIN (an unprivileged container?)"
    roots = cgroup_roots()
    if not roots:
        return "no usable cgroup hierarchy under /sys/fs/cgroup"
    if not all(os.access(r, os.W_OK) for r in roots):
        return f"cgroups not writable: {', '.join(map(str, roots))}"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem (needed by --volatile=overlay)"
    if shutil.which("apt-get") is None and not (
        shutil.which("systemd-nspawn") and shutil.which("debootstrap")
    ):
        return "systemd-nspawn/debootstrap missing and no apt-get to install them"
    return None


def ensure_host_tools(log: Path | None = None) -> None:
    """apt-get install systemd-container debootstrap when one is missing (updating lists once if needed)."""
    if shutil.which("systemd-nspawn") and shutil.which("debootstrap") and shutil.which("nsenter"):
        return
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=900", "-q"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = _run([*apt, "install", "-y", *HOST_PACKAGES], timeout=900, log=log, env=env)
    if r.returncode != 0:
        _run([*apt, "update"], timeout=900, log=log, env=env)
        r = _run([*apt, "install", "-y", *HOST_PACKAGES], timeout=900, log=log, env=env)
    if r.returncode != 0 or not shutil.which("systemd-nspawn") or not shutil.which("debootstrap"):
        raise NspawnUnavailable(f"apt-get install {' '.join(HOST_PACKAGES)} failed: {r.stderr[-500:]}")


def host_mirror(suite: str = SUITE) -> str:
    """The URI of the host's Debian `suite` entry, from deb822 .sources or one-line .list files."""
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields: dict[str, str] = {}
            last = ""
            for line in stanza.splitlines():
                if line.lstrip().startswith("#") or not line.strip():
                    continue
                if line[0] in " \t" and last:
                    fields[last] += " " + line.strip()
                    continue
                key, _, val = line.partition(":")
                last = key.strip().lower()
                fields[last] = val.strip()
            if (
                "deb" in fields.get("types", "").split()
                and suite in fields.get("suites", "").split()
                and fields.get("enabled", "yes").lower() != "no"
                and fields.get("uris")
            ):
                return fields["uris"].split()[0]
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    raise NspawnUnavailable(f"no '{suite}' deb entry in the host's apt sources (needed by debootstrap)")


# --------------------------------------------------------------------------- the rootfs


def build_rootfs(out: Path = ROOTFS_TAR, log: Path | None = None) -> float:
    """debootstrap minbase + PACKAGES, trim, scrub host specifics, tar to `out`. Returns seconds."""
    t0 = time.monotonic()
    mirror = host_mirror()
    if not mirror.startswith(("http://", "https://", "file:/")):
        raise NspawnUnavailable(f"unsupported mirror URI in the host's apt sources: {mirror}")
    build = Path(tempfile.mkdtemp(prefix="pgna-nspawn-build.", dir=CACHE_DIR))
    r = build / "rootfs"
    try:
        res = _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(r), mirror],
            timeout=1800,
            log=log,
        )
        if res.returncode != 0:
            raise NspawnUnavailable(f"debootstrap failed (rc={res.returncode}): {res.stderr[-800:]}")
        # Shrink and scrub: caches, docs, locales, the mirror URL, identity, host-specific files.
        for pattern in (
            "var/cache/apt/archives/*.deb",
            "var/cache/apt/*.bin",
            "var/lib/apt/lists/*",
            "var/log/bootstrap.log",
            "var/lib/systemd/random-seed",
            "usr/share/doc/*",
            "usr/share/man/*",
            "usr/share/info/*",
        ):
            for p in r.glob(pattern):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
        for p in (r / "usr/share/locale").glob("*"):
            if p.name != "locale.alias":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        (r / "etc/apt/sources.list").write_text("")
        for rel in ("etc/machine-id", "etc/resolv.conf", "var/lib/dbus/machine-id"):
            with contextlib.suppress(FileNotFoundError):
                (r / rel).unlink()
        (r / "etc/machine-id").write_text("")
        (r / "etc/resolv.conf").write_text("")
        (r / "var/lib/dbus").mkdir(parents=True, exist_ok=True)
        (r / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
        (r / "etc/hostname").write_text(HOSTNAME + "\n")
        (r / "etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost\n"
        )
        tmp = out.with_name(f"{out.name}.tmp.{os.getpid()}")
        res = _run(
            ["tar", "--numeric-owner", "--xattrs", "--acls", "-C", str(r), "-cf", str(tmp), "."],
            timeout=600,
            log=log,
        )
        if res.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise NspawnUnavailable(f"tar of the rootfs failed: {res.stderr[-500:]}")
        tmp.replace(out)
    finally:
        _run(["rm", "-rf", "--one-file-system", str(build)], timeout=300)
    return time.monotonic() - t0


def _tar_missing_packages(tar: Path) -> list[str]:
    r = subprocess.run(
        ["tar", "-xOf", str(tar), "./var/lib/dpkg/status"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    installed = set(re.findall(r"^Package: (\S+)\n(?:.+\n)*?Status: install ok installed", r.stdout, re.M))
    return [p for p in PACKAGES if p not in installed]


def ensure_rootfs(log: Path | None = None) -> Path:
    """The extracted, never-written lower dir of the cached rootfs (building/extracting once).

    Installs the host tools if needed. Timings land in TIMINGS (`rootfs_build_s`, `rootfs_extract_s`).
    """
    reason = unavailable_reason()
    if reason:
        raise NspawnUnavailable(reason)
    ensure_host_tools(log)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with BUILD_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ROOTFS_TAR.exists() and _tar_missing_packages(ROOTFS_TAR):
            ROOTFS_TAR.unlink()  # an older build without a package we now need
        if not ROOTFS_TAR.exists():
            TIMINGS["rootfs_build_s"] = build_rootfs(ROOTFS_TAR, log)
        st = ROOTFS_TAR.stat()
        lower = LOWER_BASE / f"{int(st.st_mtime)}-{st.st_size}"
        if not (lower / ".complete").exists():
            t0 = time.monotonic()
            LOWER_BASE.mkdir(exist_ok=True)
            tmp = lower.with_name(lower.name + ".tmp")
            _run(["rm", "-rf", "--one-file-system", str(tmp)], timeout=300)
            tmp.mkdir()
            res = _run(
                ["tar", "--numeric-owner", "--xattrs", "--acls", "-C", str(tmp), "-xf", str(ROOTFS_TAR)],
                timeout=600,
                log=log,
            )
            if res.returncode != 0:
                raise NspawnUnavailable(f"extracting {ROOTFS_TAR} failed: {res.stderr[-500:]}")
            (tmp / ".complete").touch()
            tmp.rename(lower)
            for old in LOWER_BASE.iterdir():  # older extractions (a rebuilt tarball)
                if old != lower:
                    _run(["rm", "-rf", "--one-file-system", str(old)], timeout=300)
            TIMINGS["rootfs_extract_s"] = time.monotonic() - t0
    return lower


# --------------------------------------------------------------------------- the agent's wheels


def agent_wheels(repo: Path, log: Path | None = None) -> tuple[Path, Path]:
    """(dir with the agent's wheel built from the working tree, dir with its dependencies' wheels).

    The agent is built from a copy of the tree (no build/ or egg-info in the repository, no race
    with other builds); the dependency wheels are built once per dependency list with the host's
    pip configuration and cached under WHEEL_CACHE, so the container installs with --no-index.
    The host's Python must match the container's (3.11 on bookworm).
    """
    meta = tomllib.loads((repo / "pyproject.toml").read_text())
    deps: list[str] = meta["project"]["dependencies"]
    key = hashlib.sha256("\n".join(sorted(deps)).encode()).hexdigest()[:16]
    deps_dir = WHEEL_CACHE / f"deps-{key}"
    py = (
        str(repo / ".venv/bin/python")
        if (repo / ".venv/bin/python").exists()
        else shutil.which("python3") or "python3"
    )
    with BUILD_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (deps_dir / ".complete").exists():
            tmp = deps_dir.with_name(deps_dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            r = _run([py, "-m", "pip", "wheel", "-q", "--wheel-dir", str(tmp), *deps], timeout=900, log=log)
            if r.returncode != 0:
                raise RuntimeError(f"pip wheel of the dependencies failed: {r.stderr[-1500:]}")
            (tmp / ".complete").touch()
            tmp.rename(deps_dir)
    work = Path(tempfile.mkdtemp(prefix="pgna-wheel."))
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (repo / name).exists():
            shutil.copy2(repo / name, src / name)
    shutil.copytree(repo / "agent", src / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = work / "dist"
    r = _run(
        [
            py,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(src),
        ],
        timeout=300,
        log=log,
    )
    if r.returncode != 0:
        raise RuntimeError(f"building the agent's wheel failed: {r.stderr[-1500:]}")
    shutil.rmtree(src)
    return out, deps_dir


# --------------------------------------------------------------------------- the container


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for t in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in t.read_text().split()]
    return out


def cleanup_stale_cgroups() -> None:
    """Remove cgroup dirs left by runs whose owner died (only empty ones; nothing is killed)."""
    for root in cgroup_roots():
        for d in root.glob(f"{CG_PREFIX}*"):
            m = re.match(rf"{CG_PREFIX}(\d+)-", d.name)
            if m and not pid_alive(int(m.group(1))):
                _rmdir_tree(d)


def _rmdir_tree(d: Path) -> bool:
    for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    try:
        d.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


class Container:
    """One boot of the rootfs. Use as a context manager: boot on enter, poweroff + cleanup on exit."""

    _seq = 0

    def __init__(
        self, lower: Path, *, binds_ro: Mapping[Path, str] | None = None, log_dir: Path | None = None,
        bpf: bool = False,
    ) -> None:
        """`bpf`: boot with the unified cgroup hierarchy and let the container's systemd load BPF
        programs, so IPAddressDeny=/DevicePolicy= are enforced (measured: shared note
        systemd-in-container.md); off, they are accepted but not enforced."""
        Container._seq += 1
        self.bpf = bpf
        self.lower = lower
        self.binds_ro = dict(binds_ro or {})
        self.machine = f"pgna-{os.getpid()}-{Container._seq}"
        self.cg_name = f"{CG_PREFIX}{os.getpid()}-{Container._seq}"
        self.cg_dirs: list[Path] = []
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="pgna-nspawn-log."))
        self.console_log = self.log_dir / f"{self.machine}.console"
        self.popen: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.state = ""

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Container:
        try:
            self.boot()
        except BaseException:
            self.poweroff()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.poweroff()

    def boot(self, timeout: float = 60.0) -> None:
        t0 = time.monotonic()
        cleanup_stale_cgroups()
        for root in cgroup_roots():
            d = root / self.cg_name
            d.mkdir(exist_ok=True)
            self.cg_dirs.append(d)
        cg_procs = [str(d / "cgroup.procs") for d in self.cg_dirs]

        def into_cgroups() -> None:  # runs in the child between fork and exec
            for p in cg_procs:
                with open(p, "w") as f:
                    f.write(str(os.getpid()))

        argv = [
            "systemd-nspawn",
            "-q",
            "--register=no",
            "--keep-unit",
            "--boot",
            "--console=read-only",
            "--volatile=overlay",
            "--link-journal=no",
            "--resolv-conf=off",
            f"--hostname={HOSTNAME}",
            "-D",
            str(self.lower),
            f"--machine={self.machine}",
        ]
        argv += [f"--bind-ro={src}:{dst}" for src, dst in self.binds_ro.items()]
        env = None
        if self.bpf:
            argv[1:1] = ["--system-call-filter=bpf", "--capability=CAP_BPF,CAP_PERFMON"]
            env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with self.console_log.open("ab") as console:
            self.popen = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=into_cgroups,
            )
        nspawn = self.popen.pid
        my_pidns = os.readlink("/proc/self/ns/pid")

        def leader() -> int | None:
            if self.popen is not None and self.popen.poll() is not None:
                raise NspawnUnavailable(
                    f"systemd-nspawn exited with {self.popen.returncode} during boot: {self.console_tail()}"
                )
            for c in _children(nspawn):
                with contextlib.suppress(OSError):
                    if (
                        os.readlink(f"/proc/{c}/ns/pid") != my_pidns
                        and Path(f"/proc/{c}/comm").read_text().strip() == "systemd"
                    ):
                        return c
            return None

        found = wait_until(leader, timeout, "container PID 1 (systemd)", interval=0.02)
        self.leader = found if isinstance(found, int) else None
        wait_until(
            lambda: Path(f"/proc/{self.leader}/root/run/systemd/private").is_socket(),
            timeout,
            "container systemd's private socket",
            interval=0.02,
            detail=self.console_tail,
        )
        r = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=timeout)
        self.state = r.stdout.strip()
        if self.state not in ("running", "degraded"):
            raise NspawnUnavailable(
                f"container did not finish booting (state {self.state!r}): {self.console_tail()}"
            )
        TIMINGS["boot_s"] = time.monotonic() - t0

    def poweroff(self, timeout: float = 30.0) -> None:
        """SIGTERM to nspawn = orderly poweroff; SIGKILL by PID after `timeout`; then our cgroups."""
        t0 = time.monotonic()
        p = self.popen
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                if self.leader is not None and pid_alive(self.leader):
                    os.kill(self.leader, signal.SIGKILL)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        for d in self.cg_dirs:
            deadline = time.monotonic() + 10
            while not _rmdir_tree(d):
                if time.monotonic() > deadline:  # something is still inside: kill it, by PID
                    for procs in d.rglob("cgroup.procs"):
                        for pid in procs.read_text().split():
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(int(pid), signal.SIGKILL)
                    deadline = time.monotonic() + 10
                time.sleep(0.1)
        self.cg_dirs = []
        for sub in ("propagate", "unix-export"):
            shutil.rmtree(f"/run/systemd/nspawn/{sub}/{self.machine}", ignore_errors=True)
        for sub in ("propagate", "unix-export", "locks", ""):
            with contextlib.suppress(OSError):
                Path(f"/run/systemd/nspawn/{sub}").rmdir()  # only when empty (another run may use it)
        self.leader = None
        if p is not None:
            TIMINGS["poweroff_s"] = time.monotonic() - t0
        self.popen = None

    def console_tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.console_log.read_text(errors="replace")[-n:]
        return ""

    # ------------------------------------------------------------------ driving
    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0, input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """argv in all of the container's namespaces, as its root, with a clean environment (plus `env`)."""
        if self.leader is None:
            raise RuntimeError("container is not running")
        r = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env={**CT_ENV, **(env or {})},
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise RuntimeError(
                f"in container: {argv} -> rc={r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            )
        return r

    def systemctl(
        self, *args: str, check: bool = False, timeout: float = 90.0
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        args = ["show", unit] + [f"--property={p}" for p in props]
        out: dict[str, str] = {}
        for line in self.systemctl(*args, check=True).stdout.splitlines():
            k, _, v = line.partition("=")
            out[k] = v
        return out

    def journal(self, unit: str | None = None, *args: str) -> str:
        argv = ["journalctl", "--no-pager", "-q", "-o", "short-precise", "-b"]
        if unit:
            argv += ["-u", unit]
        return self.run([*argv, *args], check=False).stdout

    def write_file(self, path: str, data: str, mode: str = "0644", owner: str = "root:root") -> None:
        """Write `path` inside the container (through its own mount namespace, not /proc/PID/root)."""
        self.run(["mkdir", "-p", str(Path(path).parent)])
        self.run(["dd", f"of={path}", "status=none"], input=data)
        self.run(["chmod", mode, path])
        self.run(["chown", owner, path])

    def read_file(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def share_host_registries(self) -> dict[str, str]:
        """Let apt and pip inside reach what the host reaches (the rootfs is scrubbed of both): the
        host's resolver, apt sources and Acquire:: settings, CA bundle (an egress proxy may re-sign
        TLS) and PIP_*/proxy variables. Returns the environment to run installs with."""
        self.write_file("/etc/resolv.conf", Path("/etc/resolv.conf").read_text())
        for f in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.sources"),
                  *Path("/etc/apt/sources.list.d").glob("*.list")]:
            if f.is_file() and SUITE in f.read_text():  # the rootfs is bookworm: only bookworm's entries
                self.write_file(str(f), f.read_text())
        for f in Path("/etc/apt/apt.conf.d").glob("*"):
            if f.is_file() and "Acquire::" in f.read_text(errors="replace"):
                self.write_file(str(f), f.read_text())
        bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        env = {k: v for k, v in os.environ.items()
               if k.startswith("PIP_") or k.lower() in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
        if bundle.is_file():
            self.write_file(str(bundle), bundle.read_text())
            env.update(PIP_CERT=str(bundle), SSL_CERT_FILE=str(bundle), REQUESTS_CA_BUNDLE=str(bundle))
        return env


@contextlib.contextmanager
def booted(binds_ro: Mapping[Path, str] | None = None, log_dir: Path | None = None) -> Iterator[Container]:
    """ensure_rootfs() + one boot, powered off whatever happens in the block."""
    lower = ensure_rootfs(log_dir / "nspawn-build.log" if log_dir else None)
    with Container(lower, binds_ro=binds_ro, log_dir=log_dir) as ct:
        yield ct


# ----------------------------------------------------------------------- the agent, installed as documented

CHECKOUT = "/mnt/pgna/checkout"
DEPS = "/mnt/pgna/deps"
# docs/installation.md's steps that put the agent on a node: the venv, the user, the unit. Step 1
# (build the wheel) is agent_wheels(); steps 5 and 6 (config, start) are each test's own.
INSTALL_STEPS = r"^### [234]\. "


def agent_binds(repo: Path, agent_dir: Path, deps_dir: Path) -> dict[Path, str]:
    """Read-only binds for install_agent(): the parts of a checkout the page's steps read (the
    unit, the docs), with the built wheel as its `dist/`, and the dependencies' wheels."""
    return {
        agent_dir: f"{CHECKOUT}/dist",
        repo / "systemd": f"{CHECKOUT}/systemd",
        repo / "README.md": f"{CHECKOUT}/README.md",
        repo / "docs": f"{CHECKOUT}/docs",
        deps_dir: DEPS,
    }


def install_agent(ct: Container, repo: Path) -> None:
    """Run docs/installation.md's own ```sh blocks of INSTALL_STEPS in the container (read by
    .ci/walkthrough, as .ci/newcomer reads them), in the checkout agent_binds() mounted. The
    machine has no network: pip finds the dependencies in the bound wheel directory, as the
    page's offline install does (PIP_NO_INDEX/PIP_FIND_LINKS are pip's own settings for it)."""
    r = _run(["bash", str(repo / ".ci/walkthrough"), INSTALL_STEPS], timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f".ci/walkthrough {INSTALL_STEPS!r} failed: {r.stderr}")
    steps = re.findall(r"^echo 'walkthrough: block \d+ \(### (\d)\.", r.stdout, re.M)
    if steps != ["2", "3", "4"]:
        raise RuntimeError(f"docs/installation.md: expected one sh block in each of steps 2-4, got {steps}")
    ct.run(
        ["env", "-C", CHECKOUT, "bash", "-euxo", "pipefail", "-c", r.stdout],
        timeout=600,
        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": DEPS, "DEBIAN_FRONTEND": "noninteractive"},
    )
