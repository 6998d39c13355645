from pathlib import Path

import pytest
import yaml


REPO = Path(__file__).resolve().parents[2]
BASE = str(REPO / "configs" / "grpo_arithmetic_tiny.yaml")


@pytest.fixture
def write_study(tmp_path):
    """Write a study YAML under tmp_path; returns its path."""
    def write(arms: dict, name: str = "study", **top):
        data = {"base": {"config": BASE, "overrides": top.pop("overrides", [])}, "baseline": top.pop("baseline", next(iter(arms))),
                "arms": arms, "seeds": top.pop("seeds", [0, 1]), **top}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path
    return write
