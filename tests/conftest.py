"""Fixtures shared by the tests: a hooked CPU engine build and the two models, all from the real cache."""
from __future__ import annotations

from pathlib import Path

import pytest

from gpuscope.engine.build import BuildSpec, build_engine
from gpuscope.models import default_model, synth_model
from gpuscope.session.binding import EngineBuild, resolve_engine


@pytest.fixture(scope="session")
def engine_build() -> EngineBuild:
    """The hooked CPU build (built on first use, about 3 minutes on 2 cores; cached afterwards)."""
    return resolve_engine(build_engine(BuildSpec()).root)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return synth_model("tiny")


@pytest.fixture(scope="session")
def gemma() -> Path:
    return default_model()
