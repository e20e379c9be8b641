"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

Built from Go modules (this directory's go.mod: one Kubernetes release, one binary that is etcd,
kube-apiserver, kube-controller-manager or kubectl by the name it is called by) into
.cluster/bin/, and started with certificates and service-account keys made by `pki`. RBAC is on;
the admin kubeconfig authenticates with a client certificate in system:masters. There is no
kubelet and no scheduler: objects are stored, validated, defaulted, authorised and garbage
collected, but no pod ever runs.

    python -m tests.controlplane up      # make cluster-up: build (cached), start, .cluster/kubeconfig
    python -m tests.controlplane down    # make cluster-down
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.controlplane.pki import Pki, generate

MODULE = Path(__file__).resolve().parent
REPO = MODULE.parent.parent
STATE = REPO / ".cluster"
BIN = STATE / "bin"
BINARY = BIN / "controlplane"
PROGRAMS = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_RANGE = "10.0.0.0/24"
# Garbage collection (ownerReferences), namespace deletion, and the `default` ServiceAccount of
# each namespace; nothing that would need a kubelet or a scheduler.
CONTROLLERS = "garbage-collector-controller,namespace-controller,serviceaccount-controller"
ADMIN = "issueops-admin"  # the admin client certificate's common name (pki.py)
# Every request but the admin's (the tests' and the controller manager's own), at Metadata
# level: who asked for what, and what the API server answered.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "None", "users": [ADMIN]}, {"level": "Metadata"}],
}


class Unavailable(Exception):
    """The control plane cannot be built or started here; the message says why, in one line."""


def source_digest() -> str:
    """What the binary is built from: go.mod, go.sum, main.go and the Go version."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((MODULE / name).read_bytes())
    digest.update(ldflags().encode())
    go = shutil.which("go")
    if go:
        digest.update(subprocess.run([go, "version"], capture_output=True, text=True).stdout.encode())
    return digest.hexdigest()


def kubernetes_version() -> str:
    """The release go.mod requires (k8s.io/kubernetes vX.Y.Z), stamped into the binaries."""
    for line in (MODULE / "go.mod").read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "k8s.io/kubernetes":
            return words[1]
    raise Unavailable("tests/controlplane/go.mod requires no k8s.io/kubernetes")


def ldflags() -> str:
    """-s -w, and the version `kubectl version` and /version report (as Kubernetes' own build sets it)."""
    version = kubernetes_version()
    major, minor = version.removeprefix("v").split(".")[:2]
    stamps = {"gitVersion": version, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean"}
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{name}={value}" for name, value in stamps.items()]
    return " ".join(flags)


@dataclass
class Build:
    binary: Path
    seconds: float  # of the build that made this binary (0 when nothing was rebuilt now)
    built_now: bool


def build(bin_dir: Path = BIN) -> Build:
    """Build the binary unless one built from the same sources is there (stamped by digest)."""
    binary, stamp, record = bin_dir / "controlplane", bin_dir / "controlplane.stamp", bin_dir / "build.json"
    if shutil.which("go") is None:
        if binary.exists() and stamp.exists():
            return Build(binary, _recorded_seconds(record), False)
        raise Unavailable("Go is not installed: the control plane is built from tests/controlplane (Go 1.26)")
    digest = source_digest()
    if binary.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        _link_programs(bin_dir)
        return Build(binary, _recorded_seconds(record), False)
    bin_dir.mkdir(parents=True, exist_ok=True)
    partial = bin_dir / "controlplane.partial"
    started = time.monotonic()
    done = subprocess.run(
        ["nice", "go", "build", "-trimpath", f"-ldflags={ldflags()}", "-o", str(partial), "."],
        cwd=MODULE,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["(no output)"]
        raise Unavailable(f"go build of tests/controlplane failed: {lines[-1]}")
    partial.replace(binary)
    stamp.write_text(digest + "\n")
    record.write_text(json.dumps({"seconds": round(seconds, 1), "digest": digest}) + "\n")
    _link_programs(bin_dir)
    return Build(binary, seconds, True)


def _recorded_seconds(record: Path) -> float:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return float(json.loads(record.read_text())["seconds"])
    return 0.0


def _link_programs(bin_dir: Path) -> None:
    for program in PROGRAMS:
        link = bin_dir / program
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to("controlplane")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started it ends (a killed test run)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class ControlPlane:
    """A running control plane; its files live under `root` (pki/, run/, kubeconfig)."""

    root: Path
    bin_dir: Path = BIN
    etcd_port: int = 0
    port: int = 0
    started_seconds: float = 0.0
    build: Build | None = None
    _children: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def pki(self) -> Pki:
        return Pki(self.root / "pki")

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return ISSUER

    @property
    def audit_log(self) -> Path:
        return self.run_dir / "audit.log"

    def _audit_policy(self) -> Path:
        path = self.run_dir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(AUDIT_POLICY))
        return path

    def audit(self, user: str | None = None) -> list[dict]:
        """The API server's audit events so far (of `user` only, when given)."""
        if not self.audit_log.exists():
            return []
        events = [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]
        return [e for e in events if user is None or e["user"]["username"] == user]

    def program(self, name: str) -> str:
        return str(self.bin_dir / name)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, **kwargs):
        """`kubectl --kubeconfig <admin> ...`, its output captured as text."""
        return subprocess.run(
            [self.program("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            input=input,
            **kwargs,
        )

    # -- starting --------------------------------------------------------------------------

    def start(self, *, timeout: float = 90, die_with_parent: bool = False) -> ControlPlane:
        """Certificates, etcd, kube-apiserver (until /readyz), admin kubeconfig, controller manager."""
        try:
            return self._start(timeout, die_with_parent)
        except BaseException:
            self.stop()  # nothing half-started is left running
            raise

    def _start(self, timeout: float, die_with_parent: bool) -> ControlPlane:
        started = time.monotonic()
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        pki = generate(self.root / "pki")
        self.etcd_port, peer, self.port = free_port(), free_port(), free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{peer}"
        self._spawn(
            "etcd",
            [
                "--name=issueops-test",
                f"--data-dir={self.run_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=issueops-test={peer_url}",
                "--unsafe-no-fsync",  # a throwaway store for tests: speed over durability
                "--log-level=warn",
            ],
            die_with_parent,
        )
        self._wait(f"{etcd_url}/health", "etcd", timeout, context=None)
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",  # no `kubernetes` Service endpoint on loopback
                f"--secure-port={self.port}",
                f"--cert-dir={self.run_dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.path('apiserver.crt')}",
                f"--tls-private-key-file={pki.path('apiserver.key')}",
                f"--client-ca-file={pki.ca}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-key-file={pki.path('sa.pub')}",
                f"--service-account-signing-key-file={pki.path('sa.key')}",
                "--anonymous-auth=false",
                f"--audit-policy-file={self._audit_policy()}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=0",
            ],
            die_with_parent,
        )
        self.write_kubeconfig()
        self._wait(f"{self.server}/readyz", "kube-apiserver", timeout, context=self._tls())
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--controllers={CONTROLLERS}",
                "--leader-elect=false",
                "--secure-port=0",
                "--concurrent-gc-syncs=5",
                "--v=0",
            ],
            die_with_parent,
        )
        self.started_seconds = time.monotonic() - started
        (self.run_dir / "state.json").write_text(
            json.dumps({"server": self.server, "etcd": etcd_url, "started_seconds": self.started_seconds})
        )
        return self

    def _spawn(self, name: str, args: list[str], die_with_parent: bool) -> None:
        log = (self.run_dir / f"{name}.log").open("wb")
        child = subprocess.Popen(
            [self.program(name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
        log.close()
        self._children[name] = child
        (self.run_dir / f"{name}.pid").write_text(f"{child.pid}\n")

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(self.pki.path("admin.crt"), self.pki.path("admin.key"))
        return context

    def _wait(self, url: str, name: str, timeout: float, context) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            child = self._children[name]
            if child.poll() is not None:
                raise Unavailable(f"{name} exited ({child.returncode}): {self._log_tail(name)}")
            try:
                with urllib.request.urlopen(url, context=context, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError as error:
                last = str(error)
            time.sleep(0.2)
        raise Unavailable(f"{name} not ready after {timeout:.0f} s ({last}): {self._log_tail(name)}")

    def _log_tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            lines = (self.run_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()
            return lines[-1] if lines else "(empty log)"
        return "(no log)"

    def write_kubeconfig(self) -> Path:
        def data(name: str) -> str:
            return base64.b64encode(self.pki.pem(name)).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "issueops-test",
                    "cluster": {"server": self.server, "certificate-authority-data": data("ca.crt")},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": data("admin.crt"),
                        "client-key-data": data("admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "issueops-test", "context": {"cluster": "issueops-test", "user": "admin"}}],
            "current-context": "issueops-test",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)
        return self.kubeconfig

    def token_kubeconfig(self, path: Path, token: str) -> Path:
        """A kubeconfig that authenticates with `token` (a ServiceAccount's, or a bad one)."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["users"] = [{"name": "admin", "user": {"token": token}}]
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    # -- stopping --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the processes this object started, newest first, then delete etcd's data."""
        for name in reversed(list(self._children)):
            _terminate(self._children.pop(name))
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        shutil.rmtree(self.run_dir / "etcd", ignore_errors=True)


def _terminate(child: subprocess.Popen, grace: float = 10) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(grace)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def stop_recorded(root: Path, bin_dir: Path = BIN) -> list[str]:
    """Stop what `up` started from its pid files (a process no longer running ours is left alone)."""
    run_dir = root / "run"
    stopped: list[str] = []
    for name in reversed(PROGRAMS):
        pid_file = run_dir / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text().strip() or 0)
        if pid and _is_ours(pid, bin_dir / name):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(f"{name} ({pid})")
        pid_file.unlink()
    shutil.rmtree(run_dir / "etcd", ignore_errors=True)
    return stopped


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _is_ours(pid: int, program: Path) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return argv0 == str(program)


@contextlib.contextmanager
def running(root: Path, *, bin_dir: Path = BIN) -> Iterator[ControlPlane]:
    """Build (cached) and start a control plane under `root`; stop it on the way out."""
    made = build(bin_dir)
    plane = ControlPlane(root, bin_dir, build=made)
    try:
        plane.start(die_with_parent=True)
        yield plane
    finally:
        plane.stop()
