"""What a new user meets first, through the command line as they run it: help and version,
directories of specs, readable validation output, the cache, bad YAML, and the bounds on
what a small hostile input may cost (alias expansion, validator time)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from controlplane import cli, compile
from controlplane.documents import Document, DocumentStore
from controlplane.errors import Diagnostics, Severity
from tests.conftest import REAL_SPECS, REPO
from tests.xds_harness import http_get, wait_for

SPEC_HEAD = 'openapi: 3.0.3\ninfo: {title: t, version: "1"}\nservers: [{url: "http://127.0.0.1:9000"}]\n'
POLICY_HEAD = "apiVersion: controlplane.dev/v1\nkind: GatewayPolicy\n"
GOOD = SPEC_HEAD + "paths:\n  /a:\n    get: {operationId: getA, responses: {'200': {description: ok}}}\n"


def run(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


# -- help and version ---------------------------------------------------------------------


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_of_every_command_has_help_text() -> None:
    undocumented = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in [("controlplane", cli.parser()), *_commands().items()]
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert not undocumented, f"options without help: {undocumented}"


@pytest.mark.parametrize("command", sorted(_commands()))
def test_help_of_each_command_describes_every_option(command: str) -> None:
    proc = run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    options = _commands()[command]._actions
    text = "".join(proc.stdout.split())
    for action in options:
        assert action.help is not None
        # argparse prints each help text after the option, reflowed (whitespace is left out here)
        assert "".join(action.help.split()) in text, action.option_strings


def test_version_prints_the_package_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"controlplane {version('controlplane')}"


# -- directories ----------------------------------------------------------------------------

TREE = {
    "api.openapi.yaml": SPEC_HEAD + "paths:\n  /a:\n    $ref: parts/paths/a.yaml\n",
    # a fragment: not a spec by itself, reached by $ref
    "parts/paths/a.yaml": "get:\n  operationId: getA\n  responses: {'200': {description: ok}}\n",
    # a spec in a sub-directory, not referred to by anything: served
    "nested/deeper/b.openapi.yaml": SPEC_HEAD
    + "paths:\n  /b:\n    get: {operationId: getB, responses: {'200': {description: ok}}}\n",
    # YAML that is neither spec nor policy, and does not even parse: nobody's business
    "notes/todo.yaml": "first: do this: then that\n",
    "README.md": "# Specs\n\nThese: are not: YAML\n",
    ".hidden/c.openapi.yaml": SPEC_HEAD + "paths:\n  /c:\n    get: {operationId: getC}\n",
}


def test_validate_walks_sub_directories_and_says_what_it_read(tmp_path: Path) -> None:
    write(tmp_path, TREE)
    proc = run("validate", ".", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if ": note [inputs]: " in line]
    assert notes == [
        ".: note [inputs]: read 2 specs and 0 policies; 2 other YAML/JSON files: read only where a spec or "
        "policy refers to them; skipped 1 file that is not YAML or JSON: README.md"
    ]
    assert "error" not in proc.stderr and "warning" not in proc.stderr, proc.stderr
    assert "ok: 1 listener(s), 2 operation route(s)" in proc.stderr  # /a and /b; not the hidden /c


def test_the_readme_shows_what_validate_prints_about_the_examples() -> None:
    readme = (REPO / "README.md").read_text()
    (shown,) = re.findall(r"```text\n(specs: note \[inputs\]: .*)\n```", readme)
    proc = run("validate", "specs")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0] == shown


def test_serve_and_dump_read_directories_the_same_way(tmp_path: Path) -> None:
    write(tmp_path, TREE)
    result = compile([tmp_path])
    assert result.ok, result.diagnostics
    assert result.gateway is not None
    paths = sorted(p.path.template for lst in result.gateway.listeners for p in lst.paths)
    assert paths == ["/a", "/b"]  # the fragment is not served as a spec of its own
    # what the watcher polls for new files: every YAML/JSON file under the directory
    from controlplane.sources import stamps

    assert {Path(p).relative_to(tmp_path.resolve()).as_posix() for p in stamps(tmp_path)} == {
        "api.openapi.yaml",
        "parts/paths/a.yaml",
        "nested/deeper/b.openapi.yaml",
        "notes/todo.yaml",
    }


def test_serve_notices_a_new_spec_in_a_sub_directory(tmp_path: Path) -> None:
    from controlplane.server import ControlPlane, ServeOptions

    write(tmp_path, TREE)

    async def scenario() -> tuple[int, int]:
        plane = ControlPlane(
            ServeOptions(
                [tmp_path],
                xds_address="127.0.0.1:0",
                admin_address="127.0.0.1:0",
                in_process=True,
                background_validation=False,
            )
        )
        await plane.start()

        async def operations_become(n: int) -> int:
            deadline = time.monotonic() + 30
            while plane.report.operations != n and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return plane.report.operations

        try:
            before = plane.report.operations
            # an edit of a file that was read: proves the watcher is looking
            write(tmp_path, {"parts/paths/a.yaml": TREE["parts/paths/a.yaml"] + "post: {operationId: postA}\n"})
            edited = await operations_become(3)
            write(tmp_path, {"nested/new/c.openapi.yaml": SPEC_HEAD + "paths:\n  /c:\n    get: {operationId: getC}\n"})
            return before, edited, await operations_become(4)
        finally:
            await plane.stop()

    assert asyncio.run(scenario()) == (2, 3, 4)


def test_port_override_needs_exactly_one_listener(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "api.yaml": GOOD,
            "policy.yaml": POLICY_HEAD
            + "listeners: [{name: a, port: 8080}, {name: b, port: 8081}]\n"
            + "upstreams: [{name: u, endpoints: ['127.0.0.1:9000']}]\n"
            + "apis: [{name: api, spec: api.yaml, upstream: u}]\n",
        },
    )
    refused = compile([tmp_path / "policy.yaml"], listener_port=9999)
    assert [str(d) for d in refused.errors] == ["--port: error: --port needs one listener; the inputs define 2 (a, b)"]
    moved = compile([tmp_path / "api.yaml"], listener_port=9999)
    assert moved.gateway is not None and [lst.port for lst in moved.gateway.listeners] == [9999]


def test_a_file_given_by_name_must_be_a_spec_or_a_policy(tmp_path: Path) -> None:
    write(tmp_path, TREE)
    proc = run("validate", "parts/paths/a.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "parts/paths/a.yaml:1: error [unknown-document]" in proc.stderr


# -- readable findings -----------------------------------------------------------------------

_OPS = "".join(f"  /op{i}:\n    get:\n      operationId: op{i}\n      responses: {{'200': {{}}}}\n" for i in range(6))


def test_a_finding_repeated_in_many_places_is_said_once_with_a_count(tmp_path: Path) -> None:
    write(tmp_path, {"api.yaml": SPEC_HEAD + "paths:\n" + _OPS})
    proc = run("validate", "api.yaml", "--no-cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    said = [line for line in lines if "is not valid under any of the given schemas" in line]
    assert said == [
        "api.yaml:8 (#/paths/~1op0/get/responses/200): warning [openapi-validation]: "
        "OpenAPI validation: {} is not valid under any of the given schemas"
    ]
    assert (
        "    … and the same in 5 more places: api.yaml:12 (#/paths/~1op1/get/responses/200), "
        "api.yaml:16 (#/paths/~1op2/get/responses/200), … (--all lists each)"
    ) in lines
    assert "0 error(s), 6 warning(s) (5 of them repeats, grouped above)" in lines
    every = run("validate", "api.yaml", "--no-cache", "--all", cwd=tmp_path)
    assert len([line for line in every.stderr.splitlines() if "is not valid under any" in line]) == 6


@pytest.mark.skipif(not (REAL_SPECS / "digitalocean").is_dir(), reason="needs ../shared/real-specs")
def test_the_digitalocean_tree_reads_in_a_few_lines() -> None:
    proc = run("validate", str(REAL_SPECS / "digitalocean"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) < 20, proc.stderr  # was 1,326 lines: two messages once per operation
    assert "read 1 spec and 0 policies" in lines[0] and "skipped 1 file that is not YAML or JSON: LICENSE" in lines[0]
    assert "AttributeError" not in proc.stderr and "Traceback" not in proc.stderr
    # the validator stops at a schema it cannot read: where, and why
    assert any(
        "load_balancers/models/load_balancer.yml:22 (#/allOf/3/properties/$ref): warning" in line
        and "must be a schema" in line
        for line in lines
    ), proc.stderr
    assert any("an operation written as a $ref" in line for line in lines)
    assert any("the same in 658 more places" in line for line in lines)


def test_a_value_the_validator_cannot_read_is_located_not_leaked(tmp_path: Path) -> None:
    # The shape found in the DigitalOcean description: `properties: {$ref: …}` (a $ref where a
    # map of schemas belongs) in a file the validator reaches through another file's $ref.
    write(
        tmp_path,
        {
            "api.yaml": SPEC_HEAD + "paths:\n  /a:\n    get:\n      responses:\n        '200':\n"
            "          description: ok\n          content:\n            application/json:\n"
            "              schema:\n                type: object\n                properties:\n"
            "                  thing: {$ref: 'models.yaml'}\n",
            "models.yaml": "allOf:\n  - $ref: 'base.yaml'\n  - type: object\n    properties:\n"
            "      $ref: 'other.yaml#/name'\n",
            "base.yaml": "type: object\n",
            "other.yaml": "name: {type: string}\n",
        },
    )
    proc = run("validate", "api.yaml", "--no-cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "AttributeError" not in proc.stderr, proc.stderr
    assert (
        "models.yaml:5 (#/allOf/1/properties/$ref): warning [openapi-validation]: OpenAPI validation: full "
        "validation stopped early: this must be a schema, not 'other.yaml#/name'"
    ) in proc.stderr, proc.stderr


def test_a_default_value_is_located_and_a_big_value_described_not_printed(tmp_path: Path) -> None:
    big = {f"key{i}": "x" * 40 for i in range(80)}  # ~4 KB as a Python dict
    write(
        tmp_path,
        {
            "api.yaml": SPEC_HEAD + "paths:\n  /a:\n    get:\n      parameters:\n        - name: q\n"
            f"          in: query\n          example: {big}\n      responses: {{'200': {{description: ok}}}}\n"
            "components:\n  schemas:\n    Mode:\n      type: string\n      default: [auto]\n",
        },
    )
    proc = run("validate", "api.yaml", "--no-cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert max(map(len, proc.stderr.splitlines())) < 300, proc.stderr
    assert (
        "api.yaml:8 (#/paths/~1a/get/parameters/0): warning [openapi-validation]: OpenAPI validation: an object "
        "with 3 key(s) (name, in, example) is not valid under any of the given schemas"
    ) in proc.stderr
    assert (
        "api.yaml:16 (#/components/schemas/Mode/default): warning [openapi-validation]: OpenAPI validation: "
        "['auto'] is not of type 'string'"
    ) in proc.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # a key without ':' was reported on the next line, without a column
            SPEC_HEAD + "paths:\n  /a:\n    get:\n      operationId: a\n      summary\n  /b: {}\n",
            "api.yaml:8:7: error [yaml]: invalid YAML: the key that starts here has no ':' after it",
        ),
        (  # a quote never closed: where it opens, not the end of the file
            SPEC_HEAD + 'paths:\n  /a:\n    get:\n      description: "never closed\n  /b: {}\n',
            "api.yaml:7:20: error [yaml]: invalid YAML: the quoted string that starts here is never closed",
        ),
        (
            SPEC_HEAD + "paths:\n  /a:\n\tget: {}\n",
            "api.yaml:6:1: error [yaml]: invalid YAML: found character that cannot start any token (a tab: YAML "
            "indents with spaces only)",
        ),
        (
            SPEC_HEAD + "paths:\n  /a: {get: {}\n",
            "api.yaml:6:1: error [yaml]: invalid YAML: did not find expected ',' or '}' (while parsing a flow "
            "mapping that starts at line 5, column 7)",
        ),
    ],
    ids=["missing-colon", "unclosed-quote", "tab", "unclosed-flow-mapping"],
)
def test_yaml_syntax_errors_point_at_line_and_column(text: str, expected: str, tmp_path: Path) -> None:
    write(tmp_path, {"api.yaml": text})
    proc = run("validate", "api.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert expected in proc.stderr, proc.stderr


def test_a_typo_in_an_auth_provider_is_one_error(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "api.yaml": SPEC_HEAD + "paths:\n  /a:\n    get: {operationId: getA}\n",
            "jwks.json": (REPO / "specs" / "idp" / "jwks.json").read_text(),
            "policy.yaml": POLICY_HEAD + "auth:\n  providers:\n    - name: idp\n      issuer: https://idp.example.com\n"
            "      jwks: {file: jwks.json}\n      timout: 5s\n"
            "upstreams: [{name: b, endpoints: ['127.0.0.1:9000']}]\n"
            "apis:\n  - name: a\n    spec: api.yaml\n    upstream: b\n    auth: {provider: idp}\n",
        },
    )
    proc = run("validate", "policy.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if ": error [" in line]
    assert len(errors) == 1, proc.stderr  # not also "no auth provider named 'idp'"
    assert errors[0].startswith("policy.yaml:8 (#/auth/providers/0/timout): error [policy-schema]: unknown key")


# -- the validation cache ---------------------------------------------------------------------


def test_the_cache_folder_comes_from_the_environment_and_can_be_turned_off(tmp_path: Path) -> None:
    write(tmp_path, {"api.yaml": SPEC_HEAD + "paths:\n  /a:\n    get: {operationId: getA}\n"})
    off = run("validate", "api.yaml", cwd=tmp_path, env={"CONTROLPLANE_CACHE_DIR": "c1", "CONTROLPLANE_NO_CACHE": "1"})
    assert off.returncode == 0, off.stderr
    assert not (tmp_path / "c1").exists()
    on = run("validate", "api.yaml", cwd=tmp_path, env={"CONTROLPLANE_CACHE_DIR": "c2", "CONTROLPLANE_NO_CACHE": "0"})
    assert on.returncode == 0, on.stderr
    assert len(list((tmp_path / "c2" / "validation").glob("*.json"))) == 1


# -- small input, large cost ---------------------------------------------------------------------

# Nine aliases per level, eight levels, no recursion: 9^8 copies of a schema the validator walks.
BOMB = (
    SPEC_HEAD
    + "paths: {}\ncomponents:\n  schemas:\n    s0: &s0 {type: string}\n"
    + "".join(
        f"    s{i}: &s{i} {{type: object, properties: {{{', '.join(f'p{j}: *s{i - 1}' for j in range(9))}}}}}\n"
        for i in range(1, 9)
    )
)


def test_a_yaml_alias_bomb_is_refused_with_an_error_naming_the_file(tmp_path: Path) -> None:
    assert len(BOMB) < 1200
    write(tmp_path, {"bomb.yaml": BOMB})
    proc = run("validate", "bomb.yaml", "--no-cache", cwd=tmp_path)
    assert proc.returncode == 1
    (error,) = [line for line in proc.stderr.splitlines() if ": error [" in line]
    assert error.startswith("bomb.yaml:5 (#/components): error [yaml-alias-expansion]: refused: YAML aliases expand")


def test_anchors_used_as_intended_are_accepted(tmp_path: Path) -> None:
    shared = "  /r{i}:\n    get:\n      operationId: r{i}\n      responses: *ok\n"
    spec = (
        SPEC_HEAD
        + "x-responses: &ok {'200': {description: ok, content: {application/json: {schema: {type: object}}}}}\n"
        + "paths:\n"
        + "".join(shared.format(i=i) for i in range(50))
    )
    write(tmp_path, {"api.yaml": spec})
    result = compile([tmp_path / "api.yaml"], full_validation=True, use_cache=False)
    assert result.ok and not result.warnings, result.diagnostics


def _spec_doc(tmp_path: Path) -> tuple[DocumentStore, Document]:
    write(tmp_path, {"api.yaml": GOOD})
    store = DocumentStore(Diagnostics())
    doc = store.load(tmp_path / "api.yaml")
    assert doc is not None
    return store, doc


def test_the_validator_is_stopped_at_its_time_limit(tmp_path: Path) -> None:
    from controlplane.model.validation import validate

    store, doc = _spec_doc(tmp_path)
    (stopped,) = validate(store, doc, use_cache=False, timeout=0.001)
    assert stopped.severity is Severity.WARNING and stopped.file.endswith("api.yaml") and stopped.pointer == ""
    assert "full validation stopped early: it took longer than the limit of 0.001 s" in stopped.message
    # the process that was stopped is replaced for the next document
    assert validate(store, doc, use_cache=False, timeout=60) == []


def test_a_time_limit_result_is_cached_only_for_that_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from controlplane.model.validation import cache_dir, validate

    monkeypatch.setenv("CONTROLPLANE_CACHE_DIR", str(tmp_path / "cache"))
    store, doc = _spec_doc(tmp_path)
    entry = cache_dir() / f"{doc.digest}.json"
    assert len(validate(store, doc, timeout=0.001)) == 1
    assert json.loads(entry.read_text())["timed_out_at"] == 0.001  # a server does not retry it on every change
    assert validate(store, doc, timeout=60) == []  # a longer limit runs it again
    assert json.loads(entry.read_text())["timed_out_at"] is None


def test_the_time_limit_comes_from_the_environment_and_strict_refuses(tmp_path: Path) -> None:
    write(tmp_path, {"api.yaml": GOOD})
    tiny = {"CONTROLPLANE_VALIDATION_TIMEOUT": "0.001"}
    default = run("validate", "api.yaml", "--no-cache", cwd=tmp_path, env=tiny)
    assert default.returncode == 0, default.stderr
    assert "api.yaml:1: warning [openapi-validation]: OpenAPI validation: full validation stopped early" in (
        default.stderr
    )
    strict = run("validate", "api.yaml", "--no-cache", "--strict", cwd=tmp_path, env=tiny)
    assert strict.returncode == 1
    assert "api.yaml:1: error [openapi-validation]: OpenAPI validation: full validation stopped early" in (
        strict.stderr
    )


# -- the server: status after a rejected change, Ctrl-C ----------------------------------------------


def test_status_after_a_rejected_change_shows_the_served_operations(tmp_path: Path) -> None:
    from controlplane.server import ControlPlane, ServeOptions

    write(tmp_path, {"api.yaml": SPEC_HEAD + "paths:\n" + _OPS})

    async def scenario() -> tuple[str, str]:
        plane = ControlPlane(
            ServeOptions(
                [tmp_path],
                xds_address="127.0.0.1:0",
                admin_address="127.0.0.1:0",
                in_process=True,
                background_validation=False,
            )
        )
        await plane.start()
        try:
            (tmp_path / "api.yaml").write_text(SPEC_HEAD + "paths:\n  /a/{:\n    get: {}\n")
            assert not await plane.recompile(time.monotonic())
            status = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "controlplane",
                "status",
                "--server",
                f"127.0.0.1:{plane.admin_port}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await status.communicate()
            return out.decode(), err.decode()
        finally:
            await plane.stop()

    out, err = asyncio.run(scenario())
    assert re.search(r"last compile: REJECTED, serving version [0-9a-f]+, 6 operations", out), out + err


def _workers(pid: int) -> list[str]:
    """Command lines of the multiprocessing workers ``pid`` started."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "spawn_main" in cmdline:
                    out.append(cmdline)
    return out


def test_ctrl_c_stops_serve_without_a_traceback(tmp_path: Path) -> None:
    from tests.harness import free_port

    admin = free_port()
    serve = ["serve", "specs/", "--insecure", "--xds-address", "127.0.0.1:0", "--admin-address", f"127.0.0.1:{admin}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane", *serve],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    )
    try:
        wait_for(lambda: http_get(admin, "/readyz")[0] == 200, 60, "serve ready")
        # both workers (compiles, background validation) are up: an interrupted one printed the traceback
        wait_for(lambda: len(_workers(proc.pid)) >= 2, 30, "two compile workers")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err
