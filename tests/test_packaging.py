"""Packaging facts: environment.yml keeps in step with pyproject.toml; the public API is what __all__ says."""

from __future__ import annotations

import ast
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]
CONDA_NAME = {"torch": "pytorch"}  # PyPI name -> conda-forge name where they differ
USER_EXTRAS = ("server", "diffusers", "whisper", "webrtc", "notebook")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_has_every_runtime_requirement():
    """Each requirement of the package and its user extras appears in environment.yml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in USER_EXTRAS:
        extras = project["optional-dependencies"][extra]
        wanted |= {_name(r) for r in extras if not r.startswith("speech2image")}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    have: set[str] = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            have |= {_name(r) for r in dep["pip"] if not r.startswith("-")}
        else:
            have.add(_name(dep))
    missing = sorted(n for n in wanted if CONDA_NAME.get(n, n) not in have)
    assert missing == []


#: The public API as documented (README "From Python", the tutorial): changing it is a decision.
PUBLIC_API = [
    "Generation",
    "ImageClient",
    "Panel",
    "Recorder",
    "Secret",
    "Settings",
    "Speech2ImageError",
    "TranscriptEvent",
    "WebRTCRecorder",
    "__version__",
    "app",
    "connect",
    "decode_audio",
    "generate",
    "transcribe",
]


def _type_checking_imports(path: Path) -> dict[str, str]:
    """Name -> absolute module of each import in ``if TYPE_CHECKING:`` of the package's __init__.py
    (what type checkers and editors see, written apart from the runtime's lazy table)."""
    tree = ast.parse(path.read_text())
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.level == 1, ast.unparse(stmt)
                for alias in stmt.names:
                    names[alias.asname or alias.name] = f"speech2image_nb.{stmt.module}"
    return names


def test_public_api_is_exactly_all_and_every_name_resolves():
    """__all__ is the documented API, type checkers see the same names, and each resolves (lazily) to
    the object its module defines."""
    import importlib
    import types

    import speech2image_nb

    assert speech2image_nb.__all__ == PUBLIC_API
    typed = _type_checking_imports(Path(speech2image_nb.__file__))
    assert sorted(typed) == [n for n in PUBLIC_API if n != "__version__"]
    public = {
        name
        for name in dir(speech2image_nb)
        if not name.startswith("_") and not isinstance(getattr(speech2image_nb, name), types.ModuleType)
    }
    assert public | {"__version__"} == set(PUBLIC_API)
    for name, module in typed.items():
        assert getattr(speech2image_nb, name) is getattr(importlib.import_module(module), name), name
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert speech2image_nb.__version__ == project["version"]
    assert callable(speech2image_nb.app) and callable(speech2image_nb.transcribe)
    assert issubclass(speech2image_nb.Speech2ImageError, Exception)


def test_tutorial_recording_is_small_package_data_copied_from_the_fixtures():
    """The tutorial's no-microphone recording is package data, under 150 KB, a copy of fixture espeak_08."""
    import fnmatch
    from importlib.resources import files

    import speech2image_nb
    from tests.conftest import DATA_DIR, load_speech_fixtures

    bundled = Path(str(files(speech2image_nb) / "data" / "green_dragon.wav"))
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    relative = bundled.relative_to(Path(speech2image_nb.__file__).parent).as_posix()
    assert any(fnmatch.fnmatch(relative, p) for p in patterns["speech2image_nb"]), relative
    assert bundled.stat().st_size < 150_000
    assert bundled.read_bytes() == (DATA_DIR / "espeak_08.wav").read_bytes()
    texts = {f.path.name: f.text for f in load_speech_fixtures()}
    assert texts["espeak_08.wav"] == "a green dragon reading a book in a library"
