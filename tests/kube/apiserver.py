"""A real kube-apiserver for the tests: built from Debian's ``kubernetes`` source package, cached, run on loopback.

No package ships a kube-apiserver binary, but Debian bookworm's ``kubernetes`` source package
(1.20.2, with its dependencies vendored) builds one with the repository's own ``make``:

* :func:`build` fetches the source through a *private* apt configuration (a ``deb-src`` entry for
  the machine's own Debian mirror, with its own lists and cache, so the machine's apt setup is not
  touched), installs the toolchain from Debian (``golang-1.19-go``, ``etcd-server``, ``rsync``), and
  runs ``make WHAT=cmd/kube-apiserver`` offline. The binary is cached under
  ``~/.cache/ct/kube-apiserver/<source version>/``: about 6 minutes the first time, nothing after.
* :class:`ApiServer` starts ``etcd`` and the server on 127.0.0.1 only, with RBAC and token
  authentication (no anonymous requests), a serving certificate of its own CA, and a
  service-account key pair for the TokenRequest API.

:func:`unavailable` says why a build cannot be had here (no apt-get, no root), so a test can skip
saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("CT_KUBE_CACHE") or Path.home() / ".cache" / "ct" / "kube-apiserver")
SOURCE_PACKAGE = "kubernetes"
GIT_VERSION = "v1.20.2"
TOOLCHAIN = ("golang-1.19-go", "etcd-server", "rsync")
GO_BIN = Path("/usr/lib/go-1.19/bin")
DEB822_SOURCES = Path("/etc/apt/sources.list.d")


def _sudo() -> list[str] | None:
    """How to run apt-get as root here: directly, through passwordless sudo, or not at all (None)."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def unavailable() -> str | None:
    """Why a kube-apiserver cannot be built or restored here, or None."""
    if cached_binary() is not None and shutil.which("etcd"):
        return None
    if not shutil.which("apt-get") or not shutil.which("dpkg-source"):
        return "building a kube-apiserver needs Debian's apt-get and dpkg-source, which this machine lacks"
    if _sudo() is None:
        return "building a kube-apiserver installs Debian packages (golang-1.19-go, etcd-server), which needs root"
    if not _debian_sources():
        return f"no Debian mirror found in {DEB822_SOURCES}/*.sources to fetch the kubernetes source package from"
    return None


def _debian_sources() -> list[str]:
    """``deb-src`` stanzas (deb822) for the machine's own Debian mirrors: the same URIs, suites and keys."""
    stanzas = []
    for path in sorted(DEB822_SOURCES.glob("*.sources")):
        for block in path.read_text().split("\n\n"):
            fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line and not line.startswith("#"))
            fields = {k.strip(): v.strip() for k, v in fields.items()}
            if "deb" in fields.get("Types", "").split() and "debian" in fields.get("URIs", ""):
                stanzas.append("\n".join(f"{k}: {'deb-src' if k == 'Types' else v}" for k, v in fields.items()))
    return stanzas


def _apt_env(work: Path) -> dict[str, str]:
    """A private apt configuration in ``work``: its own source list, package lists and cache."""
    (work / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (work / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (work / "sources.list.d").mkdir(exist_ok=True)
    (work / "sources.list.d" / "debian-src.sources").write_text("\n\n".join(_debian_sources()) + "\n")
    (work / "apt.conf").write_text(
        f'Dir::Etc::sourcelist "/dev/null";\nDir::Etc::sourceparts "{work}/sources.list.d";\n'
        f'Dir::State::Lists "{work}/lists";\nDir::Cache "{work}/cache";\n'
        # Downloads into this private folder as the user running it, not apt's own sandbox user.
        f'APT::Sandbox::User "{"root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")}";\n'
    )
    return {**os.environ, "APT_CONFIG": str(work / "apt.conf"), "DEBIAN_FRONTEND": "noninteractive"}


def _run(command: list[str], **kwargs: object) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]


def cached_binary() -> Path | None:
    """The newest cached build, if any."""
    found = sorted(CACHE.glob("*/kube-apiserver"))
    return found[-1] if found else None


def build() -> Path:
    """The kube-apiserver binary: from the cache, or built from Debian's source package and then cached."""
    sudo = _sudo()
    if sudo is not None and not (shutil.which("etcd") and (GO_BIN / "go").exists()):
        _run([*sudo, "apt-get", "update", "-qq"])
        _run(
            [*sudo, "apt-get", "install", "-y", "-qq", *TOOLCHAIN],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    with tempfile.TemporaryDirectory(prefix="ct-kube-src-") as tmp:
        work = Path(tmp)
        env = _apt_env(work / "apt")
        _run(["apt-get", "update", "-qq"], env=env)
        printed = subprocess.run(["apt-get", "source", "--print-uris", SOURCE_PACKAGE], env=env, check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
        # One line per file: 'URI' file-name size checksum.
        dsc = next(
            line.split()[1]
            for line in printed.splitlines()
            if len(line.split()) > 1 and line.split()[1].endswith(".dsc")
        )
        version = dsc.removesuffix(".dsc").split("_", 1)[1]
        target = CACHE / version / "kube-apiserver"
        if target.exists():
            return target
        source = work / "src"
        source.mkdir()
        _run(["apt-get", "source", "--download-only", SOURCE_PACKAGE], env=env, cwd=source)
        _run(["dpkg-source", "-x", dsc, "tree"], cwd=source)
        tree = source / "tree"
        version_file = work / "version"
        version_file.write_text(
            f"KUBE_GIT_VERSION='{GIT_VERSION}'\nKUBE_GIT_MAJOR='1'\nKUBE_GIT_MINOR='20'\nKUBE_GIT_TREE_STATE='clean'\n"
        )
        make_env = {**os.environ, "PATH": f"{GO_BIN}:{os.environ['PATH']}", "CGO_ENABLED": "0", "GOPROXY": "off",
                    "KUBE_GIT_VERSION_FILE": str(version_file), "GOCACHE": str(work / "gocache")}  # fmt: skip
        _run(["make", "WHAT=cmd/kube-apiserver"], cwd=tree, env=make_env)
        built = next(tree.glob("_output/**/kube-apiserver"))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copy2(built, partial)
        partial.replace(target)  # atomic: a killed build never leaves a broken cache
    return target


def _pem_key(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a serving certificate for 127.0.0.1 signed by it, and the service-account signing key pair."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ct-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names = [x509.DNSName("localhost"), x509.DNSName("kubernetes.default.svc"),
             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]  # fmt: skip
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {"ca": folder / "ca.crt", "cert": folder / "server.crt", "key": folder / "server.key",
             "sa_key": folder / "sa.key", "sa_pub": folder / "sa.pub"}  # fmt: skip
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(_pem_key(key))
    files["sa_key"].write_bytes(_pem_key(sa_key))
    files["sa_pub"].write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return files


class ApiServer:
    """etcd and a kube-apiserver on 127.0.0.1, with RBAC and static tokens; ``admin_token`` is in system:masters."""

    def __init__(self, binary: Path, root: Path, port: int, etcd_port: int, etcd_peer_port: int) -> None:
        self.binary, self.root, self.port = binary, root, port
        self.etcd_port, self.etcd_peer_port = etcd_port, etcd_peer_port
        self.admin_token = os.urandom(16).hex()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.url = f"https://127.0.0.1:{port}"

    def start(self, timeout_s: float = 60.0) -> ApiServer:
        self.root.mkdir(parents=True, exist_ok=True)
        files = _certificates(self.root)
        self.ca = files["ca"]
        tokens = self.root / "tokens.csv"
        tokens.write_text(f'{self.admin_token},ct-admin,ct-admin,"system:masters"\n')
        log = (self.root / "etcd.log").open("wb")
        self.processes["etcd"] = subprocess.Popen([
            "etcd", "--data-dir", str(self.root / "etcd"), "--name", "ct-test",
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer_port}",
            "--initial-cluster", f"ct-test=http://127.0.0.1:{self.etcd_peer_port}",
        ], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        log = (self.root / "kube-apiserver.log").open("wb")
        self.processes["kube-apiserver"] = subprocess.Popen([
            str(self.binary), f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--tls-cert-file={files['cert']}", f"--tls-private-key-file={files['key']}",
            "--authorization-mode=RBAC", f"--token-auth-file={tokens}", "--anonymous-auth=false",
            "--disable-admission-plugins=ServiceAccount", "--endpoint-reconciler-type=none",
            f"--service-account-key-file={files['sa_pub']}", f"--service-account-signing-key-file={files['sa_key']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true",
        ], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        self._wait_healthy(timeout_s)
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=str(self.ca))
        request = urllib.request.Request(f"{self.url}/healthz", headers={"Authorization": f"Bearer {self.admin_token}"})
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(request, context=context, timeout=2) as answer:
                    if answer.read() == b"ok":
                        return
            except OSError:
                pass
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}; see {self.root}/{name}.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the kube-apiserver did not answer /healthz in {timeout_s:.0f} s; see {self.root}")
            time.sleep(0.3)

    def kubeconfig(self, token: str, path: Path) -> Path:
        """A kubeconfig for ``token`` against this server (its CA pinned, no insecure skip)."""
        import yaml

        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "ct",
            "clusters": [{"name": "ct", "cluster": {"server": self.url, "certificate-authority": str(self.ca)}}],
            "users": [{"name": "ct", "user": {"token": token}}],
            "contexts": [{"name": "ct", "context": {"cluster": "ct", "user": "ct", "namespace": "ct"}}],
        }))  # fmt: skip
        return path

    def stop(self) -> None:
        for process in reversed(self.processes.values()):
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()
