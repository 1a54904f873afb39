"""`python -m simulator`: it prints where it listens and the credentials, serves, and stops cleanly."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from defusedxml import ElementTree as SafeET

ROOT = Path(__file__).resolve().parents[2]


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "simulator", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def read_banner(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    assert proc.stdout is not None
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip().startswith("users:"):
            return "".join(lines)
    proc.kill()
    raise AssertionError("no banner: " + "".join(lines))


def test_command_line_serves_both_nodes_and_stops_on_sigterm():
    proc = start("--rest-port", "0", "--xmpp-port", "0", "--password", "s3cret", "--deployment", "uccx")
    try:
        banner = read_banner(proc)
        assert "Finesse simulator (UCCX)" in banner
        assert "password: s3cret" in banner and "supervisor 2001" in banner
        assert "agents 1001..1010 (extensions 71001..71010)" in banner
        urls = re.findall(r"REST (http://127\.0\.0\.1:\d+)/finesse/api", banner)
        assert len(urls) == 2
        statuses = []
        for url in urls:
            info = SafeET.fromstring(requests.get(url + "/finesse/api/SystemInfo", timeout=5).content)
            assert info.findtext("deploymentType") == "UCCX"
            statuses.append(info.findtext("status"))
        assert statuses == ["IN_SERVICE", "OUT_OF_SERVICE"]  # UCCX: only the master node serves
        user = requests.get(urls[0] + "/finesse/api/User/1001", auth=("1001", "s3cret"), timeout=5)
        assert user.status_code == 200
        assert requests.get(urls[0] + "/sim", timeout=5).text.startswith("<!doctype html>")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stdout is not None
        proc.stdout.close()


def test_config_file_with_an_unknown_key_stops_with_its_name(tmp_path):
    config = tmp_path / "sim.toml"
    config.write_text('[simulator]\nrest_port = 0\nxmpp_port = 0\nwrap_up_secs = 5\n')
    result = subprocess.run([sys.executable, "-m", "simulator", "--config", str(config)], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "wrap_up_secs" in result.stderr and "unknown setting" in result.stderr


def test_config_file_seeds_users_and_settings(tmp_path):
    config = tmp_path / "sim.toml"
    config.write_text(
        'rest_port = 0\nxmpp_port = 0\npassword = "pw"\n'
        '[[agents]]\nid = "3001"\nlogin_name = "jdoe"\nfirst_name = "Jo"\nlast_name = "Doe"\n'
        'extension = "73001"\nteam_id = "1"\n')
    proc = start("--config", str(config))
    try:
        banner = read_banner(proc)
        url = re.findall(r"REST (http://127\.0\.0\.1:\d+)/finesse/api", banner)[0]
        user = SafeET.fromstring(requests.get(url + "/finesse/api/User/3001", auth=("3001", "pw"), timeout=5).content)
        assert (user.findtext("loginName"), user.findtext("firstName"), user.findtext("teamName")) == ("jdoe", "Jo", "Sales")
        assert requests.get(url + "/finesse/api/User/1001", auth=("1001", "pw"), timeout=5).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stdout is not None
        proc.stdout.close()


def test_bad_value_names_the_key():
    result = subprocess.run([sys.executable, "-m", "simulator", "--deployment", "ucce", "--agents", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "agent_count" in result.stderr
