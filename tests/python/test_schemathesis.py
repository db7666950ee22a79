"""Property-based fuzzing of the REST shim against its own OpenAPI document (served on the admin
listener) with schemathesis: generated valid and invalid requests, with and without credentials, must
never get a 5xx, and every response must match the document (status, content type, headers, body)."""

import shutil
import subprocess


def test_rest_shim_conforms_to_its_openapi_document(demo):
    schemathesis = shutil.which("schemathesis") or shutil.which("st")
    assert schemathesis, "schemathesis is installed by scripts/test.sh"
    result = subprocess.run(
        [
            schemathesis, "run", f"{demo.admin}/openapi.json",
            "--url", demo.rest,
            "--header", "ApiKey: demo-admin-key",
            "--checks", "all",
            "--max-examples", "50",
            "--max-time", "30",
            "--seed", "1",
            "--request-timeout", "5",
        ],
        capture_output=True, text=True, timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "No issues found" in output, output
    assert "generated" in output
