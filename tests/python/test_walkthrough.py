"""Runs the README's "Your own clusters" walkthrough (its ```console walkthrough block) verbatim, in a
scratch directory beside links to the checkout's `target`, `deploy` and `scripts`: a stand-in API server
that demands its client certificate, `kubeconfigd import` of its kubeadm-style admin.conf, a server on
the imported inventory, the admin kubeconfig downloaded, and `kubectl get nodes` through it. Each
command's shown output lines must appear in its output, in order; lines ending in `&` run in the
background and are stopped at the end."""

import os
import pathlib
import re
import signal
import subprocess

from conftest import ROOT, binary


def walkthrough():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```console walkthrough\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "README has one walkthrough block"
    cases = []
    for line in blocks[0].splitlines():
        if line.startswith("$ "):
            cases.append((line[2:], []))
        elif line.strip():
            cases[-1][1].append(line)
    return cases


def test_readme_walkthrough_reaches_kubectl_get_nodes(tmp_path):
    for name in ["target", "deploy", "scripts"]:
        (tmp_path / name).symlink_to(ROOT / name)
    server = str(binary())
    background = []
    try:
        for command, expected in walkthrough():
            command = command.replace("target/debug/kubeconfigd", server)
            if command.endswith("&"):
                background.append(subprocess.Popen(command[:-1], shell=True, cwd=tmp_path, start_new_session=True))
                continue
            result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"{command}\n{output}"
            position = 0
            for line in expected:
                found = output.find(line.strip(), position)
                assert found >= 0, f"{command}\nexpected: {line}\ngot:\n{output}"
                position = found + len(line.strip())
    finally:
        for process in background:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)
