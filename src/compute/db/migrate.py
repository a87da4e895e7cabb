"""Run the Alembic migrations shipped with the package (what `compute-migrate` does)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config


def alembic_dir() -> Path:
    here = Path(__file__).resolve()
    # Installed wheels carry the scripts inside the package; a checkout has them at the top.
    for candidate in (here.parents[1] / "alembic", here.parents[3] / "alembic"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("alembic migration scripts not found")


def upgrade_head(database_url: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(cfg, "head")
