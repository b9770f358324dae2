"""The Python client over TCP: mTLS (the certificate names the caller),
plaintext listeners (anonymous, read-only), option checks, and the
coordinator a registration names."""
import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "client" / "python"))
import wsync  # noqa: E402

CFG = {"model_type": "qwen2", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
       "intermediate_size": 24, "num_hidden_layers": 2, "vocab_size": 100, "tie_word_embeddings": False}


def make_pki(d, names):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2",
        "-subj", "/CN=wsync-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    with open(f"{d}/ext.cnf", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    for i, n in enumerate(names):
        run("openssl", "req", *ec, "-keyout", f"{d}/{n}.key", "-out", f"{d}/{n}.csr", "-subj", f"/CN={n}")
        run("openssl", "x509", "-req", "-in", f"{d}/{n}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
            "-set_serial", str(i + 2), "-days", "2", "-extfile", f"{d}/ext.cnf", "-out", f"{d}/{n}.pem")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path, *flags):
    wsyncd = os.environ.get("WSYNCD") or str(ROOT / "bazel-bin" / "daemon" / "wsyncd")
    sock = f"/tmp/wsync-tcp-{os.getpid()}-{time.monotonic_ns() % 100000}/wsyncd.sock"
    port = free_port()
    log = open(tmp_path / "wsyncd.log", "w")
    p = subprocess.Popen([wsyncd, "--socket", sock, "--listen", f"127.0.0.1:{port}", *flags], stderr=log)
    for _ in range(500):
        if os.path.exists(sock) or p.poll() is not None:
            break
        time.sleep(0.02)
    assert os.path.exists(sock), open(tmp_path / "wsyncd.log").read()
    return p, f"127.0.0.1:{port}"


def stop(p):
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0


def test_mtls_client_is_named_by_its_certificate(tmp_path):
    make_pki(tmp_path, ["server", "trainer", "other"])
    d = str(tmp_path)
    p, addr = start(tmp_path, "--tls-cert", f"{d}/server.pem", "--tls-key", f"{d}/server.key",
                    "--tls-client-ca", f"{d}/ca.pem")
    try:
        c = wsync.Client(address=addr, tls_ca=f"{d}/ca.pem", tls_cert=f"{d}/trainer.pem",
                         tls_key=f"{d}/trainer.key", name="remote")
        assert c.target == addr
        c.register_model("m", config=CFG)  # a certificate may write
        assert [m.model_id for m in c.status().models] == ["m"]
        # The model belongs to the certificate 'trainer': 'other' may not remove it.
        other = wsync.Client(address=addr, tls_ca=f"{d}/ca.pem", tls_cert=f"{d}/other.pem",
                             tls_key=f"{d}/other.key", name="other")
        with pytest.raises(wsync.WsyncError) as e:
            other.unregister("m")
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        other.close()
        c.unregister("m")
        c.close()
        # --tls-client-ca requires a certificate: without one, no connection.
        with pytest.raises(wsync.WsyncError) as e:
            wsync.Client(address=addr, tls_ca=f"{d}/ca.pem", name="anon", connect_timeout=2)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        stop(p)


def test_plaintext_listener_and_the_coordinator_a_registration_names(tmp_path):
    p, addr = start(tmp_path, "--insecure")
    try:
        c = wsync.Client(address=addr, insecure=True, name="plain")
        assert c.status().serving
        with pytest.raises(wsync.WsyncError) as e:  # anonymous callers are read-only
            c.register_model("n", config=CFG)
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        c.close()
        # Through the local socket, a registration naming a coordinator that
        # does not answer is undone and the error names it.
        local = wsync.Client(socket=p.args[2], name="local")
        local.register_model("m", config=CFG)
        buf = local.empty((16,), "fp32")
        with pytest.raises(wsync.WsyncError) as e:
            local.register_shards("m", "target", {"model.norm.weight": buf}, replica="g", recipe="",
                                  pieces={"model.norm.weight": [("model.norm.weight", ([0], [16]), ([0], [16]))]},
                                  coordinator="127.0.0.1:1")
        assert "127.0.0.1:1" in e.value.message
        local.close()
    finally:
        stop(p)


def test_connection_options_are_checked():
    with pytest.raises(ValueError, match="tls_ca"):
        wsync.Client(address="127.0.0.1:1")
    with pytest.raises(ValueError, match="address"):
        wsync.Client(socket="/nonexistent", insecure=True)
    with pytest.raises(ValueError, match="go together"):
        wsync.Client(address="127.0.0.1:1", tls_ca=__file__, tls_cert=__file__)
