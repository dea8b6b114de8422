"""launch.py as a user runs it, in this process (`launch.main(argv)`; 8 fake devices): the
workdir it writes, reproduction from config.json, resuming a run from its workdir alone, eval
mode, --help, clear errors for bad input that leave an existing workdir untouched, batch-job
logs, provenance. Only the multi-process run starts subprocesses."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess

import numpy as np
import pytest

from dlx.train import progress, provenance
from helpers import (
    REPO,
    eval_records,
    free_port,
    launch_command,
    launch_env,
    refused,
    train,
    train_losses,
    tree_snapshot,
)
from helpers import (
    cli as run,
)

CNN_TEST = ["--config", "configs/fashion_cnn.py:test"]
DIGITS = ["--config", "configs/digits_mlp.py"]


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "cnn"
    result = run(
        "train",
        *CNN_TEST,
        "--workdir",
        str(workdir),
        "--config.log_every_steps=1",
        "--config.eval_every_steps=10",
    )
    assert result.code == 0, result.stderr[-3000:]
    return workdir, result


def test_end_to_end_writes_every_workdir_file(cnn_run):
    workdir, result = cnn_run
    for name in (
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "model_summary.txt",
        "plots/loss.png",
        "plots/accuracy.png",
        "plots/confusion_matrix.png",
        "plots/per_class_accuracy.json",
    ):
        assert (workdir / name).is_file(), name
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "checkpoints" / "20").is_dir()
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["device_count"] == 8
    assert {"jax", "flax", "optax"} <= set(summary["versions"])
    assert 0.0 <= summary["final_eval"]["accuracy"] <= 1.0
    # examples/s leaves out the first window (the compilation); steps/s is over the whole run
    batch_size = json.loads((workdir / "config.json").read_text())["data"]["batch_size"]
    assert summary["train_examples_per_sec"] > batch_size * summary["train_steps_per_sec"] > 0
    assert [r["step"] for r in eval_records(workdir)] == [10, 20]
    assert sorted(train_losses(workdir)) == list(range(1, 21))
    assert "Results in" in result.stdout


def test_summary_records_the_whole_command_and_the_code(cnn_run):
    workdir, _ = cnn_run
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["command"] == (
        f"launch.py train --config configs/fashion_cnn.py:test "
        f"--workdir {workdir} --config.log_every_steps=1 "
        f"--config.eval_every_steps=10"
    )
    if (REPO / ".git").exists():  # a git checkout (not an installed copy)
        ancestor = subprocess.run(
            ["git", "merge-base", "--is-ancestor", summary["git_commit"], "HEAD"],
            cwd=REPO,
            check=False,
        ).returncode
        assert ancestor == 0  # the commit the run started from (HEAD, or before it)
        assert isinstance(summary["git_dirty"], bool)
        assert (workdir / "git.diff").is_file() == summary["git_dirty"]


def test_model_summary_is_flax_table_with_receptive_fields(cnn_run):
    text = (cnn_run[0] / "model_summary.txt").read_text()
    assert "Model Summary" in text and "Conv_0" in text and "head" in text
    assert "Total Parameters: 26,698" in text
    assert "receptive field" in text and "max_pool_1" in text


def test_batch_log_has_plain_progress_lines(cnn_run):
    """Not a terminal: plain lines with step, loss, examples/s and an ETA; no bar redraws."""
    stdout = cnn_run[1].stdout
    assert "\r" not in stdout
    lines = [line for line in stdout.splitlines() if line.startswith("step ") and "/20" in line]
    assert lines and lines[-1].startswith("step 20/20 (100%)")
    assert "loss " in lines[0] and "examples/s" in lines[0] and "steps/s" in lines[0]
    assert "ETA" in lines[0]  # the first line comes before the last step
    assert "step 10: eval loss=" in stdout


def test_loss_goes_down_on_real_data(cnn_run):
    losses = train_losses(cnn_run[0])
    assert sum(losses[s] for s in range(16, 21)) < sum(losses[s] for s in range(1, 6))


def test_reproduce_from_saved_config(cnn_run, tmp_path):
    workdir, _ = cnn_run
    copy = tmp_path / "copy"
    result = run("--config", str(workdir / "config.json"), "--workdir", str(copy))
    assert result.code == 0, result.stderr[-3000:]
    assert train_losses(copy) == train_losses(workdir)
    assert eval_records(copy) == eval_records(workdir)


def test_eval_mode_scores_latest_checkpoint_and_saves_it(cnn_run):
    workdir, _ = cnn_run
    result = run("eval", "--workdir", str(workdir))
    assert result.code == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout[result.stdout.index("{") :])
    assert metrics["step"] == 20
    assert metrics["accuracy"] == pytest.approx(eval_records(workdir)[-1]["accuracy"], abs=1e-6)
    saved = json.loads((workdir / "eval_results.jsonl").read_text().splitlines()[-1])
    assert saved["step"] == 20 and saved["split"] == "test"
    assert saved["accuracy"] == metrics["accuracy"]
    assert saved["command"] == f"launch.py eval --workdir {workdir}"


@pytest.mark.parametrize(
    "mode, override, expected",
    [
        ("eval", "--config.model.features=(16,16)", "there but float32["),
        ("eval", "--config.model.dense=(64,)", "this command changes model.dense of"),
        ("eval", "--config.optimizer.name=sgd", "it holds ['opt_state/0/count'"),
        ("predict", "--config.model.features=(8,)", "holds ['opt_state/0/mu/Conv_1/bias'"),
    ],
)
def test_eval_or_predict_with_another_model_or_optimizer_is_one_clear_error(
    cnn_run, tmp_path, mode, override, expected
):
    """The checkpoint is checked against the config before Orbax reads it: a changed model or
    optimizer is one `error:` line naming the variable and the overrides, nothing written."""
    from PIL import Image

    workdir, _ = cnn_run
    image = tmp_path / "item.png"
    Image.new("L", (28, 28)).save(image)
    before = tree_snapshot(workdir)
    args = [mode, "--workdir", str(workdir), override] + ([str(image)] * (mode == "predict"))
    message = refused(run(*args), expected)
    assert "does not fit this config" in message and "leave out the overrides" in message
    assert tree_snapshot(workdir) == before


def test_rerunning_a_finished_run_trains_nothing_and_keeps_its_summary(cnn_run):
    workdir, _ = cnn_run
    summary_before = (workdir / "summary.json").read_text()
    metrics_before = (workdir / "metrics.jsonl").read_text()
    result = run(
        *CNN_TEST,
        "--workdir",
        str(workdir),
        "--config.log_every_steps=1",
        "--config.eval_every_steps=10",
    )
    assert result.code == 0, result.stderr[-3000:]
    assert (workdir / "summary.json").read_text() == summary_before  # wall time, speed kept
    assert (workdir / "metrics.jsonl").read_text() == metrics_before
    assert "after 20 steps" in result.stdout


def test_workdir_alone_resumes_the_run_with_its_own_config(cnn_run):
    """No --config: the run's config.json, not configs/default.py (which it would refuse)."""
    workdir, _ = cnn_run
    metrics_before = (workdir / "metrics.jsonl").read_text()
    result = run("--workdir", str(workdir))
    assert result.code == 0, result.stderr[-3000:]
    assert "after 20 steps" in result.stdout
    assert (workdir / "metrics.jsonl").read_text() == metrics_before


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--config.optimizer.learnig_rate=0.1", "learning_rate"),
        ("--config.optimizer.learning_rate=fast", "learning_rate"),
        ("--config.data.batch_size=36", "divisible"),
        ("--config.optimizer.name=adamm", "adam"),
        ("--config.model.name=cnnn", "cnn"),
        ("--config.model.dens=(64,)", "did you mean 'dense'"),
        ("--config.profile_steps=(5,2)", "profile_steps"),
        ("--config.train_steps=0", "train_steps wins"),
    ],
)
def test_bad_config_is_one_clear_error_and_touches_nothing(cnn_run, override, expected):
    workdir, _ = cnn_run
    before = tree_snapshot(workdir)
    refused(run(*CNN_TEST, "--workdir", str(workdir), override), expected)
    assert tree_snapshot(workdir) == before


def test_changed_config_on_existing_workdir_is_refused(cnn_run):
    workdir, _ = cnn_run
    before = tree_snapshot(workdir)
    refused(run(*CNN_TEST, "--workdir", str(workdir), "--config.model.dense=(64,)"), "model.dense")
    assert tree_snapshot(workdir) == before


def test_missing_config_file(tmp_path):
    refused(run("--config", "configs/nope.py", "--workdir", str(tmp_path / "x")), "does not exist")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("mode", ["eval", "sample", "predict"])
def test_eval_sample_or_predict_of_a_folder_without_a_run_says_so(mode, tmp_path):
    assert str(tmp_path) in refused(run(mode, "--workdir", str(tmp_path)), "holds no run")
    refused(run(mode, "--workdir", str(tmp_path / "nope")), "does not exist")
    assert refused(run(mode), "needs --workdir").startswith(f"error: {mode} needs")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--num_processes", "2", "--process_id", "0"], "need --coordinator_address"),
        (["--process_id=1"], "need --coordinator_address"),
        (["--coordinator_address", "127.0.0.1:1234"], "needs --num_processes and --process_id"),
        (
            ["--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=2"],
            "must be in 0 .. 1",
        ),
        (["train", "extra"], "unexpected argument 'extra'"),
        (["bogus"], "unknown mode 'bogus'"),
    ],
)
def test_bad_launcher_flags_are_refused(args, expected, tmp_path):
    refused(
        run(*args, *DIGITS, "--workdir", str(tmp_path / "x")) if args[0] != "bogus" else run(*args),
        expected,
    )
    assert not (tmp_path / "x").exists()


def test_distributed_outside_a_cluster_is_one_error_line(tmp_path, monkeypatch):
    for name in (
        "SLURM_JOB_ID",
        "SLURM_STEP_NODELIST",
        "OMPI_MCA_orte_hnp_uri",
        "TPU_WORKER_HOSTNAMES",
        "JOB_COMPLETION_INDEX",
    ):
        monkeypatch.delenv(name, raising=False)
    line = refused(
        run(*DIGITS, "--workdir", str(tmp_path / "x"), "--distributed"), "found no cluster"
    )
    assert "--coordinator_address" in line


def test_train_steps_overrides_an_epoch_based_config(tmp_path):
    """With num_epochs set (as in most config files), --config.train_steps=6 alone makes the
    run 6 steps long."""
    workdir = tmp_path / "epochs"
    result = run(
        *CNN_TEST,
        "--config.num_epochs=1",
        "--workdir",
        str(workdir),
        "--config.train_steps=6",
        "--config.log_every_steps=1",
        "--config.progress_bar=False",
        "--config.profile_steps=(2,3)",
    )
    assert result.code == 0, result.stderr[-3000:]
    assert json.loads((workdir / "summary.json").read_text())["steps"] == 6
    assert sorted(train_losses(workdir)) == [1, 2, 3, 4, 5, 6]
    # the profiler window's trace, where TensorBoard's profile plugin looks for it
    assert list((workdir / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert not [line for line in result.stdout.splitlines() if line.startswith("step 6/6")]


@pytest.mark.parametrize(
    "spec, expected",
    [
        (
            "configs/fashion_vae.py",
            [
                "--config.vae.kl_warmup_steps",
                "--config.optimizer.learning_rate",
                "--config.model.latent_dim",
                "task 'vae'",
            ],
        ),
        (
            "configs/default.py",
            ["--config.model.features", "--config.model.kernel_init", "task 'classification'"],
        ),
    ],
)
def test_help_lists_modes_flags_and_every_config_key(spec, expected):
    result = run("--config", spec, "--help")
    assert result.code == 0 and not result.stderr, result.stderr
    for text in [
        "train",
        "eval",
        "sample",
        "--workdir",
        "--distributed",
        "--coordinator_address",
        "--num_processes",
        "--process_id",
        "--prompt",
        "--config.train_steps",
        "--config.num_epochs",
        "--config.profile_steps",
        f"config keys of {spec}",
        *expected,
    ]:
        assert text in result.stdout, text
    # every key the config holds, with its value
    assert "--config.data.batch_size" in result.stdout and "--config.seed" in result.stdout
    assert run("-h").stdout.count("--config.") > 40  # the default config, short flag


def test_help_for_a_run_shows_its_saved_values(cnn_run):
    """eval --workdir W --help: the keys of the run's own config.json."""
    result = run("eval", "--workdir", str(cnn_run[0]), "--help")
    assert result.code == 0, result.stderr
    assert f"config keys of {cnn_run[0] / 'config.json'}" in result.stdout
    assert any(
        line.split() == ["--config.train_steps", "20"] for line in result.stdout.splitlines()
    )


def test_two_processes_from_a_slurm_environment(tmp_path):
    """`srun launch.py ... --distributed`, as scripts/slurm.sbatch runs it: two processes (2 CPU
    devices each) find each other from the SLURM variables alone, print who they are, and train
    one run, checkpoints included, with the losses of the same run on one process with 4
    devices."""
    workdir = tmp_path / "two"
    port = free_port()
    processes = []
    for i in range(2):
        env = {
            **launch_env(2),
            "SLURM_JOB_ID": "1",
            "SLURM_STEP_NODELIST": "localhost",
            "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(i),
            "SLURM_LOCALID": str(i),
        }
        command = launch_command(
            *DIGITS,
            "--workdir",
            str(workdir),
            "--config.train_steps=10",
            "--config.eval_every_steps=10",
            "--config.checkpoint_every_steps=5",
            "--config.log_every_steps=1",
            "--distributed",
        )
        # jax derives the port from the job id; pin it to a free one instead
        env["JAX_COORDINATOR_PORT"] = str(port)
        processes.append(
            subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300) for p in processes]
    for i, (p, (out, err)) in enumerate(zip(processes, outputs)):
        assert p.returncode == 0, err[-3000:]
        assert f"process {i}/2, coordinator localhost:{port}: 2 of 4 cpu devices" in out
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["process_count"] == 2 and summary["device_count"] == 4
    assert summary["steps"] == 10 and (workdir / "checkpoints" / "10").is_dir()
    one = {"train_steps": 10, "eval_every_steps": 10, "log_every_steps": 1}
    train("configs/digits_mlp.py", tmp_path / "one", one, devices=4)
    a, b = train_losses(workdir), train_losses(tmp_path / "one")
    assert sorted(a) == list(range(1, 11))
    np.testing.assert_allclose([a[s] for s in a], [b[s] for s in a], rtol=1e-5)


def test_plain_progress_lines_are_spaced_and_carry_throughput_mfu_and_eta():
    out = io.StringIO()
    bar = progress.Progress(
        100,
        0,
        progress.Throughput("tokens", 1024, flops_per_step=2e9, peak_flops=1e11),
        enabled=True,
        plain=True,
        interval_s=3600,
        out=out,
    )
    bar.report(10, {"loss": 2.0, "steps_per_sec": 1.0})  # the first line: always
    bar.report(20, {"loss": 1.5, "steps_per_sec": 10.0})  # within the interval: no line
    bar.report(100, {"loss": 1.0, "steps_per_sec": 10.0})  # the last step: always
    first, last = out.getvalue().splitlines()
    assert first == (
        "step 10/100 (10%) | loss 2.0000 | 1.0 ktokens/s | 1.00 steps/s | "
        "MFU 2.0% (2.0 GFLOP/s) | ETA 0:01:30"
    )
    assert last == (
        "step 100/100 (100%) | loss 1.0000 | 10.2 ktokens/s | 10.00 steps/s | "
        "MFU 20.0% (20.0 GFLOP/s)"
    )
    # the run's throughput leaves out the first window, which holds the compilation
    assert bar.summary(0.5) == {
        "train_tokens_per_sec": 10240.0,
        "train_model_flops_per_sec": 2e10,
        "train_mfu": 0.2,
        "model_flops_per_step": 2e9,
        "peak_flops": 1e11,
    }


def test_git_diff_in_the_workdir_rebuilds_the_source_tree(tmp_path):
    source, workdir = tmp_path / "source", tmp_path / "run"
    source.mkdir()
    workdir.mkdir()

    def git(*args, cwd=source):
        return subprocess.run(
            ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (source / "model.py").write_text("width = 1\n")
    git("add", "model.py")
    git("commit", "-qm", "one")
    assert provenance.save_git_state(str(workdir), str(source)) == {
        "commit": git("rev-parse", "HEAD"),
        "dirty": False,
        "diff_file": None,
    }

    (source / "model.py").write_text("width = 2\n")  # a tracked change
    (source / "extra.py").write_text("depth = 3\n")  # an untracked file
    state = provenance.save_git_state(str(workdir), str(source))
    assert state["dirty"] and state["diff_file"] == "git.diff"
    rebuilt = tmp_path / "rebuilt"
    git("clone", "-q", str(source), str(rebuilt), cwd=tmp_path)
    git("checkout", "-q", state["commit"], cwd=rebuilt)
    git("apply", str(workdir / "git.diff"), cwd=rebuilt)
    assert (rebuilt / "model.py").read_text() == "width = 2\n"
    assert (rebuilt / "extra.py").read_text() == "depth = 3\n"

    git("add", "extra.py", "model.py")
    git("commit", "-qm", "two")
    assert not provenance.save_git_state(str(workdir), str(source))["dirty"]
    assert not (workdir / "git.diff").exists()  # a clean tree leaves no stale diff behind


@pytest.mark.parametrize(
    "spec, expected",
    [
        (
            "configs/fashion_dcgan.py:test",
            ["generator", "discriminator", "float32[1,28,28,1]", "discriminator_conv_1", "10x10"],
        ),
        ("configs/fashion_ddpm.py:test", ["int32[1]", "Total Parameters", "down_0"]),
        ("configs/fashion_autoencoder.py:conv", ["encoder_conv_1", "7x7"]),
    ],
)
def test_model_summary_of_models_called_with_several_inputs(spec, expected, tmp_path):
    """A GAN's (noise, images) and a U-Net's (x, t): tabulated as the task's init calls them,
    with the receptive fields of their convolutions."""
    from dlx import data as data_lib
    from dlx import registry
    from dlx.train import config as config_lib

    with contextlib.chdir(REPO):
        config = config_lib.load(spec)
    task = registry.task_class(config.task)(config, data_lib.info(config.data.name, None))
    task.write_run_files(str(tmp_path))
    text = (tmp_path / "model_summary.txt").read_text()
    for word in expected:
        assert word in text, word


def test_predict_gives_the_top_five_classes_of_image_files(cnn_run, tmp_path):
    from PIL import Image

    from dlx import data

    workdir, _ = cnn_run
    test_split = data.source("fashion_mnist", "test")
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"item{i}.png")
        Image.fromarray(test_split[i]["image"][..., 0]).save(paths[-1])
    result = run("predict", "--workdir", str(workdir), *map(str, paths))
    assert result.code == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    names = data.info("fashion_mnist").class_names
    for path in paths:
        start = lines.index(f"{path}:")
        top = [line.split(maxsplit=1) for line in lines[start + 1 : start + 6]]
        probabilities = [float(p.rstrip("%")) / 100 for p, _ in top]
        assert all(name in names for _, name in top) and len({n for _, n in top}) == 5
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
