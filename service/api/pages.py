"""HTML pages: one Jinja environment over service/api/templates, autoescaping, for the docs and the dashboard."""

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

templates = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=select_autoescape(),
)
STATIC = Path(__file__).resolve().parent / "static"
