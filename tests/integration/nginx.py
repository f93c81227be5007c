"""A private nginx in front of daphne instances, configured with deploy/nginx.conf.

``NginxProxy`` renders the deployment template (the same file the compose setup uses) with a free
loopback port and the instances' addresses, wraps it in a minimal main config whose pid, logs and
temp paths live in a temp prefix directory, and runs nginx in the foreground. It has the ``http``,
``ws`` and ``port`` attributes of a ``DaphneInstance``, so ``ChatSession`` talks to it the same way.
"""

from __future__ import annotations

import os
import shutil
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.integration.cluster import ROOT, DaphneInstance
from tests.redis_server import free_port

TEMPLATE = ROOT / "deploy" / "nginx.conf"

MAIN_CONFIG = """\
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/chat.conf;
}}
"""


def render_site(listen: str, upstreams: Sequence[str]) -> str:
    """deploy/nginx.conf with its ``${...}`` variables filled in, as envsubst would."""
    servers = " ".join(f"server {address};" for address in upstreams)
    template = string.Template(TEMPLATE.read_text())
    return template.safe_substitute(CHAT_LISTEN=listen, CHAT_UPSTREAM_SERVERS=servers)


class NginxProxy:
    def __init__(self, instances: Sequence[DaphneInstance], port: int | None = None) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
        self.binary = binary
        self.port = port or free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="nginx-test-"))
        # Workers drop to an unprivileged user when nginx starts as root: let them in.
        self.prefix.chmod(0o755)
        self.upstreams = [f"127.0.0.1:{instance.port}" for instance in instances]
        self.process: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/"

    def start(self, timeout: float = 10) -> NginxProxy:
        site = render_site(f"127.0.0.1:{self.port}", self.upstreams)
        (self.prefix / "chat.conf").write_text(site)
        (self.prefix / "nginx.conf").write_text(MAIN_CONFIG.format(prefix=self.prefix))
        command = [self.binary, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")]
        check = subprocess.run(
            [*command, "-e", str(self.prefix / "error.log"), "-t"], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx rejected the config:\n{check.stderr}")
        self.process = subprocess.Popen(
            [*command, "-e", str(self.prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not start:\n{self.log()}")

    def log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.prefix, ignore_errors=True)
