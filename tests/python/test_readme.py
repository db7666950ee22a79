"""Runs every `$ ` line of the README's console examples against `--demo` and checks that the output
lines shown below each command appear in its output, in order."""

import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]


def examples():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```console\n(.*?)```", text, re.S)
    assert blocks, "README has console examples"
    cases = []
    for block in blocks:
        for line in block.splitlines():
            if line.startswith("$ "):
                cases.append((line[2:], []))
            elif line.strip():
                cases[-1][1].append(line)
    return cases


def test_readme_examples_run_verbatim(demo, grpcurl):
    cases = examples()
    assert len(cases) >= 10
    for command, expected in cases:
        actual = command.replace("localhost:50051", demo.grpc).replace("localhost:8080", f"127.0.0.1:{demo.rest_port}")
        result = subprocess.run(actual, shell=True, capture_output=True, text=True, timeout=30)
        output = result.stdout + result.stderr
        position = 0
        for line in expected:
            found = output.find(line.strip(), position)
            assert found >= 0, f"{command}\nexpected: {line}\ngot:\n{output}"
            position = found + len(line.strip())
