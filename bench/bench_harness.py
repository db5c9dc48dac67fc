"""The benchmark harness itself, on the CPU: the GPU-only arithmetic and control flow (peak
table, GB/s and TFLOP/s, interleaved CUDA-event timing with stand-in events), the report,
the progress line and the CLI's scopes, saving and interruption. A GPU run happens rarely
and once: what can be proven here is proven here."""

import io
import json
import time

import pytest
import torch

from genfast import benchmarks
from genfast.benchmarks import gpu, progress, report, runner, spectral_norm_dropin


@pytest.mark.parametrize(("name", "tbps"), [
    ("NVIDIA H200", 4.8), ("NVIDIA H200 NVL", 4.8), ("NVIDIA GH200 480GB", None),
    ("NVIDIA H100 80GB HBM3", 3.35), ("NVIDIA H100 PCIe", 2.0),
    ("NVIDIA A100-SXM4-80GB", 2.0), ("NVIDIA A100-PCIE-40GB", 1.555),
    ("Tesla V100-SXM2-16GB", 0.9), ("NVIDIA L4", 0.3), ("NVIDIA L40S", None),
])
def test_peak_bandwidth_by_card_name(name, tbps):
    assert gpu.peak_tbps(name) == tbps


def test_achieved_rates_and_shares():
    got = gpu.achieved(4_800_000_000, None, 1e-3, peak_tbps=4.8)
    assert got["gbps"] == pytest.approx(4800) and got["pct_peak_bw"] == pytest.approx(100)
    assert got["tflops"] is None
    got = gpu.achieved(10, 2 * 10**12, 0.5, peak_tbps=4.8, peak_tflops=800)
    assert got["tflops"] == pytest.approx(4) and got["pct_peak_flops"] == pytest.approx(0.5)
    assert got["pct_peak_bw"] is None  # a compute-bound case's bytes are only a floor
    assert set(gpu.achieved(10, None, None).values()) == {None}


def test_repeats_are_planned_within_budget_and_interleaved():
    plan = runner.plan_repeats({"fast": 1e-4, "slow": 0.2}, repeat_s=0.01, repeats=9,
                               min_repeats=3, budget_s=0.25)
    assert plan == {"fast": (100, 9), "slow": (1, 3)}
    order = []
    runner.interleave({"fast": "f", "slow": "s"}, {"fast": (1, 3), "slow": (1, 2)},
                      lambda fn, calls: order.append(fn) or [0.0])
    assert "".join(order) == "fsfsf"


class FakeEvent:
    """torch.cuda.Event on the host clock: the CUDA timing code runs unchanged on CPU."""

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


@pytest.fixture
def fake_cuda(monkeypatch):
    syncs = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    return syncs


def test_cuda_timing_syncs_once_per_block(fake_cuda):
    calls = {"a": 0, "b": 0}

    def provider(name, seconds):
        def fn():
            calls[name] += 1
            time.sleep(seconds)
        return fn

    s = runner.Settings(gpu_warmup_ms=2, gpu_rep_ms=30, gpu_rounds=2)
    timed = gpu.time_cuda({"a": provider("a", 5e-4), "b": provider("b", 5e-3)}, s, "cpu")
    for times, per_round in timed.values():
        assert len(times) == 2 * per_round and min(times) > 0
    # one sync per block of calls: the 5-call estimate, then one block per round
    assert len(fake_cuda) == 2 * (1 + s.gpu_rounds) < sum(calls.values())
    # seconds, not ms: sleep never undershoots, and a busy box stretches it far less than 400x
    assert 5e-3 <= sorted(timed["b"][0])[len(timed["b"][0]) // 2] < 2


def test_unknown_card_is_judged_by_a_measured_copy(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mystery GPU 9000")
    info = gpu.ceilings("cpu", [torch.float32], copy_bytes=2**20, matmul_n=64)
    assert info["peak_tbps_datasheet"] is None
    assert info["peak_tbps"] == info["copy_tbps_measured"] > 0
    assert "measured" in info["peak_source"]
    assert info["matmul_tflops_measured"]["float32"] > 0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    info = gpu.ceilings("cpu", [], copy_bytes=2**20)
    assert info["peak_tbps"] == 4.8 and "datasheet" in info["peak_source"]


def test_peak_memory_is_what_one_call_adds(monkeypatch):
    mem = {"now": 100, "peak": 100}

    def alloc():
        mem["peak"] = mem["now"] + 64

    for name, fn in {"synchronize": lambda d=None: None,
                     "reset_peak_memory_stats": lambda d=None: mem.update(peak=mem["now"]),
                     "memory_allocated": lambda d=None: mem["now"],
                     "max_memory_allocated": lambda d=None: mem["peak"]}.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    assert gpu.peak_memory(alloc, "cuda:0") == 64


def _case(device="cpu", **kw):
    return runner.Case(op="toy", name="n", shape=(4, 8), dtype=torch.bfloat16, device=device,
                       mode="forward", inputs=dict, providers={}, bytes=2 * 10**9,
                       eager="torch eager", floor="floor (floor)", **kw)


def _result(case, provider, ms, status="ok"):
    r = runner.Result(case, provider, status=status)
    if ms is not None:
        r.times_s = [ms / 1e3] * 3
        r.quantiles_s = (ms / 1e3,) * 3
    return r


def test_gpu_report_shows_share_of_peak_and_names_absent_compile():
    case = _case("cuda:0")
    results = [_result(case, "genfast:triton", 1.0), _result(case, "torch eager", 4.0),
               _result(case, runner.COMPILED, None, "not run"),
               _result(case, "floor (floor)", 0.5)]
    results[2].reason = "the default run compiles one case per op"
    info = {"peak_tbps": 4.0, "matmul_tflops_measured": {"bfloat16": 700.0}}
    rows = report.rows(results, info)
    mine = rows[0]
    assert mine["gbps"] == pytest.approx(2000) and mine["pct_peak_bw"] == pytest.approx(50)
    assert mine["vs_eager"] == pytest.approx(4) and mine["vs_compile"] is None
    text = report.table("toy", rows, gpu_run=True)
    assert "% peak" in text and "50 %" in text and "not run" in text
    summary = report.summary(rows)
    assert "— (not run)" in summary and "the default run compiles one case per op" in summary
    assert "4.00x (torch eager)" in summary  # the best plain-torch provider, floor excluded


def test_compute_bound_rows_report_flops():
    case = _case(count_flops=True)
    results = [_result(case, "genfast:cpu", 2.0), _result(case, "torch eager", 3.0)]
    for r in results:
        r.flops = 4 * 10**9
    rows = report.rows(results, {})
    assert rows[0]["tflops"] == pytest.approx(2)
    assert "| 2 T |" in report.table("toy", rows, gpu_run=False)


def test_flops_are_counted_through_a_double_backward():
    conv = torch.nn.Conv2d(1, 4, 3)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)

    def penalty():
        (g,) = torch.autograd.grad(conv(x).sum(), x, create_graph=True)
        torch.autograd.grad(g.square().sum(), conv.weight)

    forward = 2 * 2 * 4 * 9 * 36  # 2 images, 4 channels, 3x3 taps, 6x6 outputs, mul+add
    assert runner.count_flops(penalty) > 2 * forward


def test_plain_progress_line():
    out = io.StringIO()
    bar = progress.Progress(3, stream=out, use_tqdm=False)
    bar.start("gumbel: case-a")
    bar.advance()
    bar.start("gumbel: case-b")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[1/3   0% 0:00] gumbel: case-a")
    assert lines[1].startswith("[2/3  33% 0:00, ~0:0") and lines[1].endswith("case-b")


def test_dropin_breakdown_splits_power_iteration_from_materialisation():
    def row(mode, provider, ms):
        return {"op": spectral_norm_dropin.LAYER_OP, "case": "L1 conv4x4s2", "shape": [8, 4],
                "dtype": "float32", "mode": mode, "provider": provider, "median_ms": ms}

    rows = [row("train", "genfast:cpu", 0.030), row("eval", "genfast:cpu", 0.020),
            row("train", "torch eager", 0.090), row("eval", "torch eager", 0.040)]
    (text,) = spectral_norm_dropin.sections(rows)
    assert "| L1 conv4x4s2 | 8x4 | 30 | 10 | 20 | 90 | 50 | 40 | 3.00x |" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_flag_without_gpu_says_so(capsys):
    assert benchmarks.main(["--gpu", "--list"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_quick_run_saves_json_markdown_and_summary(tmp_path, capsys):
    code = benchmarks.main(["sample", "--quick", "--out", str(tmp_path),
                            "--no-progress", "--threads", "1"])
    assert code == 0
    (path,) = tmp_path.glob("sample_*-quick.json")
    payload = json.loads(path.read_text())
    assert payload["scope"] == "quick" and not payload["interrupted"]
    assert {r["provider"] for r in payload["results"]} >= {"genfast:cpu", "torch.multinomial"}
    assert path.with_suffix(".md").read_text().count("### summary") == 1
    assert "### summary" in capsys.readouterr().out


def test_interrupted_run_keeps_finished_cases(tmp_path, monkeypatch):
    real, seen = runner.run_case, []

    def run_case(case, settings):
        if seen:
            raise KeyboardInterrupt
        seen.append(case.id)
        return real(case, settings)

    monkeypatch.setattr(runner, "run_case", run_case)
    code = benchmarks.main(["gumbel", "--quick", "--out", str(tmp_path), "--no-progress",
                            "--threads", "1"])
    assert code == 130
    (path,) = tmp_path.glob("*.json")
    payload = json.loads(path.read_text())
    assert payload["interrupted"]
    assert {(r["op"], r["mode"]) for r in payload["results"]} == {("gumbel_softmax", "forward")}
