"""The benchmark runner runs its smallest setting and reports what it measured."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(ROOT / "benchmarks" / "run.py")]


def bench_module():
    """``benchmarks/run.py`` imported as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_writes_one_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [*RUN, "--models", "NTM", "--paths", "eager", "fused", "--batch-sizes", "1", "--length", "2",
         "--steps", "1", "--repeats", "2", "--min-seconds", "0", "--warmup", "1", "--threads", "1",
         "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    assert "| model | batch | path | sequences / s | ms / step | peak memory (MB) | compile (s) |" in result.stdout
    report = json.loads(out.read_text())
    assert [(row["model"], row["path"]) for row in report["results"]] == [("NTM", "eager"), ("NTM", "fused")]
    for row in report["results"]:
        assert row["torch_threads"] == 1 and row["time_steps"] == 5 and row["batch_size"] == 1
        assert len(row["seconds_per_step_all"]) == 2 and row["sequences_per_second"] > 0
        assert row["compile_seconds"] is None
        assert f"| {row['model']} | 1 | {row['path']} |" in result.stdout
    assert report["machine"]["torch"].startswith("2.")


def test_a_failed_setting_is_in_the_table_and_the_json_and_the_exit_status_is_1(tmp_path):
    """`make bench` exited 0 with `failed: ...` rows in its table; it exits 1 once the table and JSON are out."""
    out = tmp_path / "bench.json"
    result = subprocess.run([*RUN, "--models", "LSTM", "--paths", "eager", "--batch-sizes", "1", "2", "--timeout",
                             "0.01", "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert result.stdout.count("| LSTM | 1 | eager | failed: over --timeout 0 s |") == 1
    assert result.stdout.count("| LSTM | 2 | eager | failed: over --timeout 0 s |") == 1
    assert f"written {out}" in result.stdout
    assert [row["error"] for row in json.loads(out.read_text())["results"]] == ["over --timeout 0 s"] * 2
    assert result.stderr.strip().splitlines()[-1] == "2 of 2 settings failed (their rows say why)"


def test_a_peer_checkout_without_its_package_is_named(tmp_path):
    result = subprocess.run([*RUN, "--peer-ntm", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert f"--peer-ntm {tmp_path}: expected the folder that holds the 'ntm' package" in result.stderr


def test_a_peer_whose_model_is_not_benchmarked_is_refused_not_skipped(tmp_path):
    (tmp_path / "ntm").mkdir()
    (tmp_path / "ntm" / "__init__.py").write_text("")
    result = subprocess.run([*RUN, "--models", "LSTM", "--paths", "eager", "--batch-sizes", "1", "--peer-ntm",
                             str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--peer-ntm: pytorch-ntm runs beside memnet's NTM, which --models leaves out (LSTM)" in result.stderr


def test_a_model_without_any_of_the_asked_paths_is_refused_not_left_out():
    result = subprocess.run([*RUN, "--models", "NTM", "LSTM", "--paths", "fused", "--batch-sizes", "1"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--models LSTM: it runs on eager, compiled, none of --paths fused" in result.stderr


def test_models_without_a_step_loop_have_no_fused_path():
    run = bench_module()
    assert run.paths_of("NTM") == run.paths_of("DNC") == ("eager", "fused", "compiled", "graphed")
    assert run.paths_of("LSTM") == run.paths_of("MemN2N") == run.paths_of("MemN2N-bAbI") == ("eager", "compiled")


def test_precision_and_compile_settings_are_in_the_row_and_the_table(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [*RUN, "--models", "NTM", "--paths", "fused", "--batch-sizes", "2", "--length", "2", "--steps", "1",
         "--repeats", "1", "--min-seconds", "0", "--warmup", "1", "--threads", "1", "--precision", "bf16",
         "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (row,) = json.loads(out.read_text())["results"]
    assert (row["path"], row["precision"], row["compile_mode"], row["unroll"]) == ("fused", "bf16", None, None)
    assert "| NTM | 2 | fused (bf16) |" in result.stdout


def test_the_graphed_path_needs_cuda():
    result = subprocess.run([*RUN, "--paths", "graphed"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "--paths graphed captures CUDA graphs: it needs --device cuda" in result.stderr


def test_the_label_names_the_compile_mode_unroll_and_precision():
    run = bench_module()
    row = {"path": "compiled", "compile_mode": "reduce-overhead", "unroll": 8, "precision": "tf32"}
    assert run.path_label(row) == "compiled (reduce-overhead, unroll 8, tf32)"
    assert run.path_label({"path": "eager", "precision": "fp32"}) == "eager"


def test_a_failed_setting_reports_the_first_error_not_the_last_line():
    run = bench_module()
    stderr = ("Traceback (most recent call last):\n  File \"run.py\", line 214, in measure\n"
              "torch.AcceleratorError: CUDA error: operation not permitted when stream is capturing\n"
              "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n\n"
              "During handling of the above exception, another exception occurred:\n"
              "torch.AcceleratorError: CUDA error: operation failed due to a previous error during capture\n"
              "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n")
    assert run.first_error(stderr) == "torch.AcceleratorError: CUDA error: operation not permitted when stream is capturing"
    assert run.first_error("killed\n") == "killed"


def test_the_babi_shaped_memn2n_setting_runs(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [*RUN, "--models", "MemN2N-bAbI", "--paths", "eager", "--batch-sizes", "4", "--steps", "1", "--repeats", "1",
         "--min-seconds", "0", "--warmup", "1", "--threads", "1", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (row,) = json.loads(out.read_text())["results"]
    assert (row["model"], row["path"], row["batch_size"]) == ("MemN2N-bAbI", "eager", 4)
    assert row["sequences_per_second"] > 0 and "error" not in row


def test_the_cpu_peak_is_that_of_the_timed_steps_not_of_what_came_before():
    # the peak resident set is reset after the warm-up, so a compile's memory (here: a big buffer freed before the
    # timed steps) is not counted as the step's
    import pytest

    run = bench_module()
    if run._proc_status_mb("VmHWM") is None:
        pytest.skip("no /proc/self/status")
    import torch

    buffer = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
    high = run._proc_status_mb("VmHWM")
    del buffer
    assert run._reset_peak_rss()
    assert run._proc_status_mb("VmHWM") < high - 32


def test_the_cpu_peak_does_not_count_the_imports_of_memnets_modules(tmp_path):
    # importing memnet.lightning (pytorch_lightning) alone adds ~125 MB of resident memory; an LSTM of 100 units at
    # batch 1 (45k parameters, Adam state, 41 steps of activations) needs a few MB
    import pytest

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("no /proc/self/clear_refs: the peak is the lifetime peak's growth")
    out = tmp_path / "bench.json"
    subprocess.run(
        [*RUN, "--models", "LSTM", "--paths", "eager", "--batch-sizes", "1", "--steps", "1", "--repeats", "1",
         "--min-seconds", "0", "--warmup", "1", "--threads", "1", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (row,) = json.loads(out.read_text())["results"]
    assert 0 < row["peak_memory_mb"] < 64


def test_a_compiled_setting_that_ran_uncompiled_fails_with_why_not_a_number(monkeypatch):
    # where torch cannot compile, memnet's compiled engine logs why and runs the fused path: the row said
    # 'compiled' with the fused path's speed (compilations 0, exit 0)
    import pytest
    import torch

    import memnet.models.core

    run = bench_module()
    monkeypatch.setattr(memnet.models.core, "compile_unavailable", lambda backend="inductor": "no C++ compiler")
    with pytest.raises(SystemExit, match=r"^not compiled: NTM engine 'compiled' is unavailable \(no C\+\+ compiler\)"):
        run.measure("NTM", "compiled", 2, steps=1, repeats=1, min_seconds=0, warmup=1,
                    threads=torch.get_num_threads(), device="cpu", length=2)


def test_a_count_below_one_is_refused_before_anything_runs():
    # --batch-sizes 0 was a MemN2N row of 0.0 sequences/s and 15.3 ms a step (exit 0), --steps 0 a division by
    # zero in every setting, --threads 0 torch's default threads under settings.threads 0
    for flag, value in (("--batch-sizes", "0"), ("--steps", "0"), ("--threads", "0"), ("--length", "-3")):
        result = subprocess.run([*RUN, "--models", "MemN2N", "--paths", "eager", flag, value],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == (
            f"run.py: error: argument {flag}: expected a whole number ≥ 1, got '{value}'")


def test_a_compile_batch_size_that_is_not_measured_is_refused_not_left_out():
    # --batch-sizes 1 --compile-batch-sizes 2 printed an empty table and wrote "results": [] (exit 0)
    result = subprocess.run([*RUN, "--models", "LSTM", "--paths", "compiled", "--batch-sizes", "1",
                             "--compile-batch-sizes", "2"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "run.py: error: --compile-batch-sizes 2: not among the batch sizes measured (1); "
        "the compiled path runs at the batch sizes of both")


def test_an_out_that_cannot_be_written_is_refused_before_anything_runs(tmp_path):
    # --out naming a folder (or a path under a file) was an IsADirectoryError (FileExistsError) traceback after the
    # whole benchmark, its JSON lost
    (tmp_path / "file").write_text("")
    for out, why in ((tmp_path, "is a folder; expected the path of the JSON file to write"),
                     (tmp_path / "file" / "bench.json", f"{tmp_path / 'file'} is a file, not a folder")):
        result = subprocess.run([*RUN, "--models", "LSTM", "--paths", "eager", "--batch-sizes", "1", "--out", str(out)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == f"run.py: error: --out {out}: {why}"


def test_a_json_write_cut_short_leaves_the_previous_results_whole(tmp_path):
    # the results file was truncated, then written: a write that failed part way (here the file size limit; a full
    # disk alike) replaced the previous results with 256 bytes of a JSON cut off mid-row
    import os
    import resource
    import signal

    out = tmp_path / "bench.json"
    out.write_text('{"results": "the previous run"}')

    def limit_file_size():  # in the child: a write past 256 bytes fails with EFBIG instead of a signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))

    result = subprocess.run([*RUN, "--models", "LSTM", "--paths", "eager", "--batch-sizes", "1", "--timeout", "0.01",
                             "--out", str(out)], capture_output=True, text=True, timeout=60, check=False,
                            preexec_fn=limit_file_size, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 1 and "File too large" in result.stderr
    assert json.loads(out.read_text()) == {"results": "the previous run"}
    assert [path.name for path in tmp_path.iterdir()] == ["bench.json"]



def test_the_cpu_peak_of_a_compiled_setting_does_not_count_the_import_of_the_compiler():
    # the baseline held memnet's modules but not dynamo and inductor, imported by the first compiled step and
    # resident through the timed steps: the LSTM at batch 1 (length 2) peaked at 101 MB compiled, 27 MB eager;
    # with the compiler in the baseline, 43 MB
    import pytest

    run = bench_module()
    if run._proc_status_mb("VmRSS") is None:
        pytest.skip("no /proc/self/status")
    run._import_models(compiler=True)
    base = run._proc_status_mb("VmRSS")
    import torch._dynamo.eval_frame
    import torch._inductor.codecache
    import torch._inductor.compile_fx  # noqa: F401

    assert run._proc_status_mb("VmRSS") - base < 5


def test_a_device_that_is_not_here_is_refused_before_anything_runs(tmp_path):
    # --device cuda on a torch without CUDA ran every setting (each failed), then the machine's description was an
    # AssertionError traceback ('Torch not compiled with CUDA enabled'): no table, no JSON
    import torch

    out = tmp_path / "bench.json"
    cuda = f"cuda:{torch.cuda.device_count()}"  # one past the last device
    for device, why in ((cuda, f"no such CUDA device here (torch {torch.__version__} sees {torch.cuda.device_count()})"),
                        ("gpu", "expected cpu, cuda or cuda:N")):
        result = subprocess.run([*RUN, "--device", device, "--models", "LSTM", "--paths", "eager", "--batch-sizes", "1",
                                 "--out", str(out)], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == f"run.py: error: --device {device}: {why}"
    assert not out.exists()


def test_ctrl_c_part_way_keeps_the_rows_measured_beside_the_complete_results(tmp_path, monkeypatch, capsys):
    # Ctrl-C during `make bench` lost every row measured so far: the KeyboardInterrupt traceback, the previous JSON
    # whole and nothing of this run. The rows so far are written beside --out, marked partial; exit status 130
    run = bench_module()
    row = {"model": "LSTM", "path": "eager", "batch_size": 1, "sequences_per_second": 10.0,
           "seconds_per_step_median": 0.1, "peak_memory_mb": 5.0, "compile_seconds": None, "torch_threads": 1}
    calls, real_run = [], subprocess.run

    def settings_run(command, **kwargs):  # the first setting measured, Ctrl-C during the second
        if "--single" not in command:  # platform's `uname -p` for the machine's description
            return real_run(command, **kwargs)
        calls.append(command[command.index("--single") + 1:command.index("--single") + 4])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(row) + "\n", stderr="")

    monkeypatch.setattr(run.subprocess, "run", settings_run)
    out = tmp_path / "bench.json"
    out.write_text('{"results": "the previous complete run"}')
    argv = ["--models", "LSTM", "--paths", "eager", "--batch-sizes", "1", "2", "4"]
    assert run.main([*argv, "--out", str(out)]) == 130
    assert calls == [["LSTM", "eager", "1"], ["LSTM", "eager", "2"]]  # nothing measured after the Ctrl-C
    assert json.loads(out.read_text()) == {"results": "the previous complete run"}
    partial = json.loads((tmp_path / "bench.partial.json").read_text())
    assert partial["partial"] is True and partial["results"] == [row]
    assert (partial["settings_measured"], partial["settings_planned"]) == (1, 3)
    printed = capsys.readouterr()
    assert "| LSTM | 1 | eager | 10.0 |" in printed.out
    assert printed.err.strip().splitlines() == [
        (f"interrupted: 1 of 3 settings measured, written to {tmp_path / 'bench.partial.json'} (marked partial); "
        f"{out} left as it was")]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bench.json", "bench.partial.json"]  # no leftovers
    # without --out: the table of the rows so far, and a line that nothing was written
    calls.clear()
    assert run.main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "interrupted: 1 of 3 settings measured; no --out, nothing written"]


def test_a_complete_run_removes_the_partial_file_an_interrupted_one_left(tmp_path, monkeypatch, capsys):
    # after a Ctrl-C wrote bench.partial.json, the next complete run wrote bench.json and left the interrupted run's
    # rows beside it, for a reader to take for this run's; they are removed, and a line says so
    run = bench_module()
    row = {"model": "LSTM", "path": "eager", "batch_size": 1, "sequences_per_second": 10.0,
           "seconds_per_step_median": 0.1, "peak_memory_mb": 5.0, "compile_seconds": None, "torch_threads": 1}
    real_run = subprocess.run

    def settings_run(command, **kwargs):
        if "--single" not in command:  # platform's `uname -p` for the machine's description
            return real_run(command, **kwargs)
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(row) + "\n", stderr="")

    monkeypatch.setattr(run.subprocess, "run", settings_run)
    out, stale = tmp_path / "bench.json", tmp_path / "bench.partial.json"
    stale.write_text('{"partial": true, "results": []}')
    assert run.main(["--models", "LSTM", "--paths", "eager", "--batch-sizes", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["results"] == [row]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bench.json"]
    assert capsys.readouterr().out.strip().splitlines()[-2:] == [
        f"written {out}", f"removed {stale} (the rows of an interrupted earlier run; {out} is this complete run's)"]
