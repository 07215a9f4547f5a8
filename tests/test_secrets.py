"""harness.secrets: a password is masked however the URL spells it, as SQLAlchemy would read it."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from harness.secrets import mask_url, redact

URLS = [
    "postgresql://me:s3cr%40t@db:5432/x",
    "postgresql://me:Zx9/kQ+2@db.internal:5432/optuna",  # base64 passwords hold "/" and "+"
    "postgresql+psycopg2://me:a:b/c@db/x",
    "mysql://me:p4ss@[::1]:3306/x",
]


@pytest.mark.parametrize("url", URLS)
def test_the_password_sqlalchemy_reads_is_masked(url):
    password = make_url(url).password
    assert password and password not in mask_url(url)
    masked = make_url(mask_url(url))
    assert masked.password == "***"
    # everything else still reads the same
    assert (masked.username, masked.host, masked.port, masked.database) == (
        make_url(url).username,
        make_url(url).host,
        make_url(url).port,
        make_url(url).database,
    )


def test_an_unescaped_at_sign_leaves_no_part_of_the_password():
    assert (
        mask_url("postgresql://bob:p@ssXYZ@127.0.0.1:1/db") == "postgresql://bob:***@127.0.0.1:1/db"
    )


def test_a_url_in_a_sentence_masks_only_its_own_password():
    text = "cannot open postgresql://me:pw@db/x (see http://host:8080/docs or mail ops@corp)"
    assert (
        mask_url(text)
        == "cannot open postgresql://me:***@db/x (see http://host:8080/docs or mail ops@corp)"
    )


def test_a_password_in_the_query_is_masked():
    url = "postgresql://me@db/x?sslmode=require&password=Zx9/kQ+2&connect_timeout=3"
    assert mask_url(url) == "postgresql://me@db/x?sslmode=require&password=***&connect_timeout=3"
    assert mask_url("postgresql://me@db/x?Password=p") == "postgresql://me@db/x?Password=***"


def test_urls_without_a_password_are_unchanged():
    for url in ("postgresql://me@db/x", "sqlite:////tmp/a.db", "sqlite:///runs/s/study.db"):
        assert mask_url(url) == url


def test_redact_masks_urls_inside_an_error_text(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    text = (
        "OperationalError: could not connect to\n  'postgresql://me:Zx9/kQ+2@db:5432/optuna' "
        f"with key {'k' * 40}"
    )
    out = redact(text)
    assert "Zx9" not in out and "k" * 40 not in out and "\n" not in out
    assert "postgresql://me:***@db:5432/optuna" in out
