"""The exact-resume check every trainer-driven model runs (DESIGN.md section 7)."""

import json

import torch

from genfast.models import _trainer


def _records(d) -> list[dict]:
    with open(d / "metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(ln).items() if k != "elapsed_s"} for ln in f]


def assert_resume_is_exact(make, name: str, train, test, tc: dict, tmp_path):
    """Train make() 6 steps in one run (tmp_path / "a") and 3 + 3 steps with a resume in
    between (tmp_path / "b", a fresh model each time, as a new process would start): the state
    dicts must be bitwise equal and metrics.jsonl the same records. Returns (a, b)."""
    a = make()
    _trainer.fit(a, name, train, test, _trainer.TrainConfig(steps=6, **tc), tmp_path / "a",
                 progress=False)
    b = make()
    _trainer.fit(b, name, train, test, _trainer.TrainConfig(steps=3, **tc), tmp_path / "b",
                 progress=False)
    b = make()
    _trainer.fit(b, name, train, test, _trainer.TrainConfig(steps=6, **tc), tmp_path / "b",
                 resume=True, progress=False)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    assert _records(tmp_path / "a") == _records(tmp_path / "b")
    return a, b
