"""nginx in front of Helios: it serves FHIR at `/`, the tests (and most deployments) want `/fhir`.

Helios has no setting for a path prefix on the routes it serves (`HFS_BASE_URL` may carry one,
but only for the links it writes), so a real reverse proxy maps `/fhir/...` to `/...`, as a
production deployment behind a gateway would. A Python shim would be part of the code under
test; nginx is the proxy people run.

The binary: `nginx` on PATH, else Debian's package unpacked into the cache folder
(`apt-get download nginx` and `dpkg -x`, no root and no installation needed; its libraries
(libc, libpcre2, libssl, zlib) are part of every Debian system).

The proxy passes the request URI byte for byte (`$request_uri` with the prefix cut off, so
percent-encoded ids and `|` in token searches reach Helios as the client sent them), buffers
nothing it need not, and allows bodies and URLs as large as Helios does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path


class NginxError(RuntimeError):
    pass


def find(cache: Path) -> Path | None:
    """nginx on PATH, or the one unpacked in the cache earlier; None if neither exists."""
    on_path = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if on_path:
        return Path(on_path)
    unpacked = cache / "nginx" / "usr" / "sbin" / "nginx"
    return unpacked if unpacked.is_file() else None


def ensure(cache: Path) -> Path:
    """The nginx binary, unpacking Debian's package into `cache/nginx/` the first time."""
    found = find(cache)
    if found is not None:
        return found
    apt_get, dpkg = shutil.which("apt-get"), shutil.which("dpkg")
    if apt_get is None or dpkg is None:
        raise NginxError("nginx is not on PATH, and without apt-get and dpkg (Debian) it cannot be "
                         "fetched: install nginx, or set HFS_PATH=/ to run Helios without a proxy.")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as work:
        print("Fetching Debian's nginx package (apt-get download nginx) ...", flush=True)
        got = subprocess.run([apt_get, "download", "-q", "nginx"], cwd=work, capture_output=True,
                             text=True)
        debs = sorted(Path(work).glob("nginx_*.deb"))
        if got.returncode != 0 or not debs:
            raise NginxError(f"`apt-get download nginx` failed (exit {got.returncode}): "
                             f"{(got.stderr or got.stdout).strip()[-600:]}. Run `apt-get update` "
                             "first, or install nginx.")
        unpacked = Path(work) / "nginx"
        subprocess.run([dpkg, "-x", str(debs[0]), str(unpacked)], check=True)
        target = cache / "nginx"
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    binary = cache / "nginx" / "usr" / "sbin" / "nginx"
    if not binary.is_file():
        raise NginxError(f"Debian's nginx package holds no usr/sbin/nginx (unpacked in {cache / 'nginx'}).")
    return binary


def version(binary: Path) -> str:
    """'nginx/1.22.1' (nginx prints its version on stderr)."""
    got = subprocess.run([str(binary), "-v"], capture_output=True, text=True)
    return (got.stderr or got.stdout).strip().rpartition(" ")[2]


def config(*, listen_port: int, upstream_port: int, prefix: str, run_dir: Path, name: str) -> str:
    """An nginx.conf serving `http://127.0.0.1:<listen_port><prefix>/...` from Helios at
    `http://127.0.0.1:<upstream_port>/...`; every file it writes is under `run_dir`."""
    prefix = "/" + prefix.strip("/")
    if prefix == "/":
        raise NginxError("the proxy is only needed for a path prefix such as /fhir")
    temp = run_dir / f"{name}-temp"
    # Workers of a root master run as `nobody` by default; they write the temp folders.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    escaped = prefix.replace(".", r"\.")
    return f"""\
# Written by tests/hfs/nginx.py for the Helios test server; regenerated at every start.
{user}worker_processes 1;
daemon off;
pid {run_dir / f"{name}.pid"};
error_log {run_dir / f"{name}-error.log"} warn;

events {{ worker_connections 1024; }}

http {{
    access_log {run_dir / f"{name}-access.log"};
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    client_max_body_size 128m;
    client_body_buffer_size 1m;
    large_client_header_buffers 8 64k;
    server_tokens off;

    # The request URI exactly as the client sent it (not nginx's decoded, normalised one),
    # with the prefix cut off: /fhir/Patient?identifier=a%7Cb -> /Patient?identifier=a%7Cb.
    map $request_uri $helios_uri {{
        "~^{escaped}/?(?<rest>.*)$" /$rest;
        default "";
    }}

    upstream helios {{
        server 127.0.0.1:{upstream_port};
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{listen_port};

        location = {prefix} {{ proxy_pass http://helios$helios_uri; include {run_dir / f"{name}-proxy.conf"}; }}
        location {prefix}/ {{ proxy_pass http://helios$helios_uri; include {run_dir / f"{name}-proxy.conf"}; }}
        location / {{ return 404; }}
    }}
}}
"""


PROXY_SETTINGS = """\
proxy_http_version 1.1;
proxy_set_header Connection "";
proxy_set_header Host $http_host;
proxy_set_header X-Forwarded-For $remote_addr;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_redirect off;
proxy_request_buffering off;
proxy_read_timeout 300s;
proxy_send_timeout 300s;
"""


def write_config(*, listen_port: int, upstream_port: int, prefix: str, run_dir: Path) -> Path:
    """Write the config (and its temp folders) for the proxy on `listen_port`; returns its path."""
    name = f"nginx-{listen_port}"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (run_dir / f"{name}-temp" / sub).mkdir(parents=True, exist_ok=True)
    (run_dir / f"{name}-proxy.conf").write_text(PROXY_SETTINGS)
    path = run_dir / f"{name}.conf"
    path.write_text(config(listen_port=listen_port, upstream_port=upstream_port, prefix=prefix,
                           run_dir=run_dir, name=name))
    return path


def command(binary: Path, conf: Path) -> list[str]:
    """The nginx command line: the prefix is the run folder, so nothing touches /etc or /var."""
    return [str(binary), "-p", str(conf.parent), "-c", str(conf), "-e", str(conf.with_suffix(".stderr"))]
