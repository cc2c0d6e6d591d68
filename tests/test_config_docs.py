"""docs/configuration.md is generated from the models and must not drift from them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gen_config_docs.py"
DOCS = REPO / "docs" / "configuration.md"


def generator() -> ModuleType:
    """scripts/gen_config_docs.py, imported (scripts/ is not a package)."""
    if "gen_config_docs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["gen_config_docs"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["gen_config_docs"]


def test_checked_in_docs_match_the_models() -> None:
    assert DOCS.read_text() == generator().render(), (
        "docs/configuration.md is out of date: run `python scripts/gen_config_docs.py`"
    )


def test_every_key_has_a_description() -> None:
    gen = generator()
    missing = [
        f"{s.path}.{name}" if s.path else name
        for s in gen.walk(gen.Section("", gen.Config))
        for name, field in s.model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert missing == []


def test_every_table_has_a_docstring() -> None:
    gen = generator()
    assert [s.path for s in gen.walk(gen.Section("", gen.Config)) if not s.model.__doc__] == []


def test_the_page_names_keys_by_dotted_path() -> None:
    text = DOCS.read_text()
    for row in [
        "| `upstreams.<name>.keepalive` | integer | `32` |",
        '| `upstreams.<name>.keepalive_timeout` | duration | `"60s"` |',
        "| `upstreams.<name>.targets[].url` | string | required |",
        "| `routes[].split[].weight` | integer | required |",
        "| `server.max_header_size` | size | `8190` |",
        '| `server.client_max_body_size` | size | `"10MiB"` |',
        "| `logging.file` | string | unset |",
        '| `redis.timeout` | duration | `"50ms"` |',
        "| `rate_limits.<name>.tiers.<tier>.rate` | rate | unset |",
    ]:
        assert row in text


def test_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    run = [sys.executable, str(SCRIPT), "--output", str(stale)]
    r = subprocess.run([*run, "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "out of date" in r.stderr
    assert subprocess.run(run, capture_output=True, timeout=60).returncode == 0
    r = subprocess.run([*run, "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert stale.read_text() == DOCS.read_text()
