"""tools/engine/resume_state.py: a resumed train_rsepm.py run refuses changed run-shaping flags,
naming each with both values and what to do, and its log equals an uninterrupted run's; the
settings check by hand."""

import os

import pytest
from helpers import kill_at, quick_rsepm_argv, read_run_log

import train_rsepm
from tools.engine import resume_state
from tools.paths import model_dir


@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset(max_size=48)


def test_resume_refuses_changed_flags_and_logs_like_an_uninterrupted_run(toy, tmp_path, monkeypatch):
    """--log_interval 4: the log line of iteration 4 averages iterations 3 and 4, and the run is
    killed between them (resume.pth of iteration 3 holds the half-filled meter)."""
    whole = train_rsepm.main(
        train_rsepm.get_args_parser().parse_args(quick_rsepm_argv(toy, tmp_path / "a", "--log_interval", "4"))
    )
    assert whole["iterations"] == 4
    with monkeypatch.context() as patch:
        kill_at(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            train_rsepm.main(
                train_rsepm.get_args_parser().parse_args(quick_rsepm_argv(toy, tmp_path / "b", "--log_interval", "4"))
            )
    resume = os.path.join(model_dir(str(tmp_path / "b"), "t"), "resume.pth")
    before = os.path.getmtime(resume)

    # item 3: a changed run-shaping flag is refused, naming the flag, both values and what to do
    for flag, old, new in (("--lr", "0.01", "0.02"), ("--max_epoch", "2", "3"), ("--pamr_dilations", "1", "1,2")):
        with pytest.raises(resume_state.ResumeError) as info:
            train_rsepm.main(
                train_rsepm.get_args_parser().parse_args(
                    quick_rsepm_argv(toy, tmp_path / "b", "--log_interval", "4", "--resume", "true", flag, new)
                )
            )
        message = str(info.value)
        assert f"{flag} was {old}, now {new}" in message and resume in message, message
        assert f"Pass the old value(s) ({flag} {old})" in message and "new --tag" in message
    assert os.path.getmtime(resume) == before  # nothing touched

    # flags of the allowlist may change (--save_interval, --num_workers stay out of the record)
    resumed = train_rsepm.main(
        train_rsepm.get_args_parser().parse_args(
            quick_rsepm_argv(toy, tmp_path / "b", "--log_interval", "4", "--resume", "true", "--save_interval", "7")
        )
    )
    assert resumed["iterations"] == 4
    # item 9: identical records, iteration 4 included (before: the mean of iteration 4 alone)
    log_a, log_b = read_run_log(tmp_path / "a"), read_run_log(tmp_path / "b")
    assert [r["iteration"] for r in log_a] == [2, 4]
    assert log_a == log_b


def test_settings_check_by_hand():
    saved = {"batch_size": 16, "lr": 0.01, "old_flag": 1}
    assert resume_state.check_settings("r.pth", saved, {"batch_size": 16, "lr": 0.01, "old_flag": 1}) == []
    with pytest.raises(resume_state.ResumeError, match=r"--batch_size was 16, now 8; --lr was 0.01, now 0.1"):
        resume_state.check_settings("r.pth", saved, {"batch_size": 8, "lr": 0.1, "old_flag": 1})
    # a flag known to one side only is not compared but reported; an old file without a record warns
    assert "--new_flag" in resume_state.check_settings("r.pth", saved, {**saved, "new_flag": 2})[0]
    assert "records no flags" in resume_state.check_settings("r.pth", None, saved)[0]
    # a new script's flags are recorded by default; only the allowlist is left out
    recorded = resume_state.run_settings({"radius": 5, "num_workers": 4, "log_interval": 9, "beta": 10.0})
    assert recorded == {"radius": 5, "beta": 10.0}
