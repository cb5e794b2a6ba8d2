"""The error table and the error body shapes; import order of api/services."""

from __future__ import annotations

import subprocess
import sys

import pytest

from confstream.api.errors import ERROR_CODES, ApiError, invalid, markdown_table, unauthorized


def test_table_lists_every_code_once() -> None:
    table = markdown_table()
    for code in ERROR_CODES:
        assert table.count(f"| {code} |") == 1
    assert {20003, 20404, 21220, 21609, 31922, 31941, 20409} <= set(ERROR_CODES)


def test_bodies() -> None:
    body = unauthorized().body()
    assert body["status"] == 401 and body["code"] == 20003 and "errors" not in body
    assert str(body["more_info"]).endswith("20003")
    validation = invalid(21205, "Url is required").body()
    assert validation["status"] == 422 and validation["errors"] == ["Url is required"]
    assert ApiError(21220, "x").http_status == ERROR_CODES[21220].status


@pytest.mark.parametrize("module", ["confstream.services", "confstream.api.routes"])
def test_modules_import_alone(module: str) -> None:
    # the API uses the services and the services use api.errors: no import cycle either way
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
