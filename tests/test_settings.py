"""Settings from the environment, and run_api.py's flags mapped onto them."""

import re
from pathlib import Path
from typing import Any

import pytest

import run_api
from settings import Settings


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRPO_MODELS_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("GRPO_MAX_CONCURRENT_JOBS", "3")
    monkeypatch.setenv("GRPO_CACHE_MAX_BYTES", "1000")
    settings = Settings()
    assert settings.models_dir == tmp_path / "m" and settings.db_path == tmp_path / "m" / "grpo.db"
    assert settings.max_concurrent_jobs == 3 and settings.cache_max_bytes == 1000


def test_limit_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPO_MAX_QUEUED_JOBS", "0")
    monkeypatch.setenv("GRPO_JOB_TIMEOUT_S", "60")
    monkeypatch.setenv("GRPO_MAX_INFERENCE_BATCH", "8")
    monkeypatch.setenv("GRPO_MAX_REQUEST_BYTES", "4096")
    monkeypatch.setenv("GRPO_CORS_ORIGINS", '["https://a.example"]')
    settings = Settings()
    assert (settings.max_queued_jobs, settings.job_timeout_s, settings.max_inference_batch) == (0, 60, 8)
    assert settings.max_request_bytes == 4096 and settings.cors_origins == ["https://a.example"]


def test_api_key_from_the_environment_and_the_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRPO_API_KEY", "from-env")
    assert Settings().api_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(Settings())
    captured: dict[str, Any] = {}
    monkeypatch.setattr(run_api.uvicorn, "run", lambda app, **kwargs: None)
    monkeypatch.setattr(run_api, "create_app", lambda settings: captured.setdefault("settings", settings))
    run_api.main(["--api-key", "from-flag", "--models-dir", str(tmp_path)])
    assert captured["settings"].api_key.get_secret_value() == "from-flag"


def test_a_blank_api_key_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPO_API_KEY", " ")
    assert Settings().api_key is None


def test_run_api_flags_map_onto_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    captured: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        captured.update(kwargs, app=app)

    monkeypatch.setattr(run_api.uvicorn, "run", fake_run)
    monkeypatch.setattr(run_api, "create_app", lambda settings: captured.setdefault("settings", settings))
    models, database = tmp_path / "m", tmp_path / "j.db"
    tls = ["--ssl-certfile", "cert.pem", "--ssl-keyfile", "key.pem"]
    run_api.main(
        ["--port", "8123", "--models-dir", str(models), "--db", str(database), "--max-concurrent-jobs", "4", *tls]
    )
    settings = captured["settings"]
    assert captured["ssl_certfile"] == Path("cert.pem") and captured["ssl_keyfile"] == Path("key.pem")
    assert captured["host"] == "127.0.0.1" and captured["port"] == 8123 and captured["log_level"] == "info"
    assert settings.models_dir == models and settings.db_path == database
    assert settings.max_concurrent_jobs == 4


@pytest.mark.parametrize(
    "key, problem",
    [
        ("clé secrète", "'é'"),  # requests sends it as Latin-1; curl and httpx refuse it
        ("ключ", "'к'"),  # no client can send it as a header
        ("  padded key  ", "starts or ends with a space"),  # HTTP strips the spaces: it never matches
        ("tab\tinside", "'\\t'"),
        ("line\nbreak", "'\\n'"),
        ("bell\x07", "'\\x07'"),
    ],
)
def test_keys_no_client_can_send_are_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], key: str, problem: str
) -> None:
    allowed = "visible ASCII characters (and spaces between them), with no space at either end"
    with pytest.raises(ValueError, match=re.escape(allowed)):
        Settings(api_key=key)
    monkeypatch.setenv("GRPO_API_KEY", key)
    with pytest.raises(ValueError, match=re.escape(problem)):
        Settings()
    monkeypatch.delenv("GRPO_API_KEY")
    # From the command line: a short message and exit status 2, as for any bad flag, not a traceback.
    monkeypatch.setattr(run_api.uvicorn, "run", lambda app, **kwargs: pytest.fail("the server must not start"))
    with pytest.raises(SystemExit) as exit_info:
        run_api.main(["--api-key", key])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--api-key" in error and allowed in error and "Traceback" not in error
    assert key.strip() not in error  # the key itself is not echoed into logs


def test_keys_every_client_can_send_are_accepted() -> None:
    for key in ["s3cret", "with inner spaces", "!#$%&'()*+,-./:;<=>?@[]^_`{|}~", "a" * 200]:
        assert Settings(api_key=key).api_key.get_secret_value() == key
