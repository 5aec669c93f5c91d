"""`styletransfer-server`'s flags are derived from the settings: one per setting, help from the
setting's docstring, values checked by the settings."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.__main__ import build_parser, parse_args
from service.settings import Settings


def test_every_setting_is_a_flag_with_its_docstring_as_help() -> None:
    """The one exception is the token list, which a flag would show to anyone running `ps`."""
    actions = {a.dest: a for a in build_parser()._actions if a.dest != "help"}
    assert set(actions) == set(Settings.model_fields) - {"auth_tokens"}
    for name, field in Settings.model_fields.items():
        if name in actions:
            assert field.description, f"setting {name} has no docstring"
            assert " ".join(field.description.split())[:40] in (actions[name].help or "").replace("%%", "%")


def test_flags_override_and_are_checked_by_the_settings() -> None:
    values = parse_args(
        [
            "--rate-limit-calls",
            "5",
            "--backends",
            "pytorch,tensorflow",
            "--no-warmup",
            "--log-format",
            "console",
        ]
    )
    settings = Settings(**values)  # type: ignore[arg-type]
    assert settings.rate_limit_calls == 5
    assert settings.backends == ("pytorch", "tensorflow")
    assert settings.warmup is False and settings.log_format == "console"
    assert parse_args([]) == {}  # unset flags leave the environment's values alone
    with pytest.raises(ValidationError, match="max_streams"):
        Settings(**parse_args(["--max-streams", "40"]))  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        parse_args(["--log-format", "xml"])


def test_the_help_answers_without_loading_a_framework() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, service.__main__ as m; m.build_parser().format_help();"
            "print(sorted(n for n in ('torch', 'tensorflow') if n in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert done.stdout.strip() == "[]"
