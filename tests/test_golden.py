"""Golden files in two stages: inputs → IR, and IR → Envoy resources (one file per xDS type).

Each case is a folder under tests/golden/ with an ``input`` folder (or ``input.txt``
naming a folder of the repository, such as ``specs``). ``pytest --update-goldens``
rewrites the expected files and removes orphans. Goldens are meant to be read in review:
a diff in them is a diff in what the gateway does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controlplane import compile, ir
from controlplane.bootstrap import static_bootstrap
from controlplane.output import to_yaml
from controlplane.resources import Resources, to_dict
from controlplane.translate import translate
from tests.conftest import REPO
from tests.harness import envoy_validate_file

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())
OUTPUTS = ["ir.yaml", *(f"{short}.yaml" for short in Resources.TYPES)]


def _inputs(case: str) -> Path:
    folder = GOLDEN / case
    pointer = folder / "input.txt"
    if pointer.exists():
        return REPO / pointer.read_text().strip()
    return folder / "input"


def _text(data: object) -> str:
    # certificate and key files are absolute paths in the IR: the checkout's place is not part of it
    return to_yaml(data).replace(str(REPO), "<repo>")


def _golden_ir(case: str) -> ir.Gateway:
    text = (GOLDEN / case / "ir.yaml").read_text().replace("<repo>", str(REPO))
    return ir.from_dict(ir.Gateway, yaml.safe_load(text))


def _check(path: Path, actual: str, update: bool) -> None:
    if update:
        path.write_text(actual)
        return
    assert path.exists(), f"{path} is missing: run pytest --update-goldens"
    assert actual == path.read_text(), f"{path} differs: run pytest --update-goldens and review the diff"


@pytest.fixture(scope="module")
def update(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))


@pytest.mark.parametrize("case", CASES)
def test_inputs_to_ir(case: str, update: bool) -> None:
    result = compile([_inputs(case)])
    assert result.ok, "\n".join(map(str, result.diagnostics))
    _check(GOLDEN / case / "ir.yaml", _text(ir.to_dict(result.gateway)), update)
    if update:
        for orphan in (GOLDEN / case).glob("*.yaml"):
            if orphan.name not in OUTPUTS:
                orphan.unlink()


@pytest.mark.parametrize("case", CASES)
def test_ir_to_resources(case: str, update: bool) -> None:
    # The IR golden is the input of this stage: translators see nothing else.
    gateway = _golden_ir(case)
    resources = translate(gateway)
    for short, url in Resources.TYPES.items():
        data = [to_dict(m) for m in resources.of(url).values()]
        _check(GOLDEN / case / f"{short}.yaml", _text(data), update)


@pytest.mark.envoy
@pytest.mark.parametrize("case", CASES)
def test_envoy_accepts_golden(case: str, tmp_path: Path) -> None:
    gateway = _golden_ir(case)
    config = tmp_path / "envoy.yaml"
    config.write_text(to_yaml(to_dict(static_bootstrap(gateway, translate(gateway)))))
    proc = envoy_validate_file(config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
