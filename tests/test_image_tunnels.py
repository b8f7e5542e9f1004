"""What counts as proof that a tunnel address is gone (speech2image_nb.images.tunnels), and what does not."""

from __future__ import annotations

import socket

import pytest
import requests

from speech2image_nb.images.tunnels import (
    edge_says_tunnel_gone,
    is_tunnel_host,
    name_does_not_exist,
    tunnel_gone_message,
)


@pytest.mark.parametrize(
    ("url", "tunnel"),
    [
        ("https://sticky-lemon-words-here.trycloudflare.com", True),
        ("https://ab12-34-56.ngrok-free.app/", True),
        ("https://old.ngrok.io", True),
        ("https://TRYCLOUDFLARE.COM.example.org", False),  # only subdomains of the service itself
        ("https://trycloudflare.com", False),
        ("http://127.0.0.1:8000", False),
        ("https://images.example.org", False),
    ],
)
def test_tunnel_hosts_are_subdomains_of_the_tunnel_services(url, tunnel):
    """Only names under trycloudflare.com / ngrok's domains are tunnel addresses."""
    assert is_tunnel_host(url) is tunnel


def test_only_a_name_that_does_not_exist_counts_not_a_resolver_that_cannot_be_reached():
    """EAI_NONAME wrapped as requests wraps it counts; EAI_AGAIN (no network) and a refusal do not."""
    missing = requests.ConnectionError(OSError("Failed to resolve"))
    missing.args[0].__cause__ = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    offline = requests.ConnectionError(OSError("Failed to resolve"))
    offline.args[0].__cause__ = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    assert name_does_not_exist(missing)
    assert not name_does_not_exist(offline)
    assert not name_does_not_exist(requests.ConnectionError(ConnectionRefusedError(111, "refused")))


def test_edge_answers_that_mean_gone_and_look_alikes_that_do_not():
    """530 + 1033 and ngrok's 3200 mean gone; another 530, a plain 404 or a 1033 with 200 do not."""
    assert edge_says_tunnel_gone(530, {}, b'{"error_code":1033}').startswith("Cloudflare error 1033")
    assert edge_says_tunnel_gone(404, {}, b"<p>ERR_NGROK_3200</p>").startswith("ngrok ERR_NGROK_3200")
    assert edge_says_tunnel_gone(404, {"ngrok-error-code": "ERR_NGROK_3200"}, b"").startswith("ngrok")
    assert edge_says_tunnel_gone(530, {}, b"<h1>Error 1016</h1>") == ""
    assert edge_says_tunnel_gone(404, {}, b'{"detail":"Not Found"}') == ""
    assert edge_says_tunnel_gone(200, {}, b"1033") == ""


def test_the_message_names_the_address_what_was_seen_and_the_connect_line():
    """One sentence: the old address, the reason, and to paste the new connect(...) line."""
    line = tunnel_gone_message("https://x.trycloudflare.com", "its name does not resolve any more")
    assert line.startswith("The tunnel address https://x.trycloudflare.com leads nowhere (its name")
    assert "paste the new speech2image_nb.connect(...) line" in line and "\n" not in line
