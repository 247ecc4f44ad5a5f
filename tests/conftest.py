import os
import sys

# Tests import `core` and `tools` from the repository root, as the scripts do.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread_and_grad():
    """One intra-op thread (2 threads on a loaded 2-core machine are many times slower for the
    tiny networks of the tests) and autograd on, whatever a previous test left behind."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.enable_grad():
        yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _release_output_locks():
    """Each test starts holding no writer lock: a script's main() run in the test process keeps the
    locks of its outputs for the life of the process (core.safety.hold_output), as a script does."""
    yield
    from core.safety import release_output

    release_output()


# The shape most tests train on: 8 train_aug images (the first 4 also in train), one validation
# and one test image, 48 to 64 pixels a side.
TOY_DEFAULTS = dict(seed=0, num_train=4, num_train_aug=8, num_validation=1, num_test=1, min_size=48, max_size=64)


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory):
    """make(**settings) -> the root (str) of a TOY dataset of make_toy_dataset with TOY_DEFAULTS
    updated by `settings`; built once per distinct settings in a session, so tests must only read
    it (a test that changes files copies it first)."""
    from tools.builders.make_toy_dataset import make_toy_dataset

    built = {}

    def make(**settings):
        settings = {**TOY_DEFAULTS, **settings}
        key = tuple(sorted(settings.items()))
        if key not in built:
            root = str(tmp_path_factory.mktemp("toy") / "TOY")
            make_toy_dataset(root, progress=False, **settings)
            built[key] = root
        return built[key]

    return make


# The tests that took over 1.3 s each on 2 idle cores (pytest --durations, 2026-12-06): the slow
# tier. `pytest -m "not slow"` runs the rest in under a minute; the whole suite runs both.
SLOW = {
    "test_affinity.py::test_forward_gives_stride4_boundary",
    "test_amp.py::test_training_in_bf16_on_cpu_is_finite_and_close_to_float32",
    "test_bad_files.py::test_bad_files_are_skipped_counted_and_listed_after_the_weights_are_saved",
    "test_bench.py::test_bench_inference_processes_counts_every_image_in_each_setting",
    "test_cli.py::test_script_with_a_bad_flag_exits_2",
    "test_cli.py::test_script_with_bad_dataset_prints_one_line_and_exits_1",
    "test_cli.py::test_the_cli_names_the_bad_settings_file",
    "test_cli.py::test_torch_runtime_error_keeps_its_traceback",
    "test_convert.py::test_bad_inputs_are_counted_listed_and_fail_the_run",
    "test_convert_rw.py::test_problems_are_reported",
    "test_evaluate.py::test_missing_predictions_exit_status_from_the_command_line",
    "test_gpu_check.py::test_smoke_runs_every_check_on_cpu",
    "test_inference.py::test_infer_rsepm_with_ground_truth_tags_matches_the_reference",
    "test_inference.py::test_script_exit_status_and_message_from_the_command_line",
    "test_no_mixups.py::test_a_fifo_image_is_skipped_and_listed_by_inference_and_conversion",
    "test_no_mixups.py::test_a_fifo_image_is_skipped_by_training_which_ends",
    "test_no_mixups.py::test_a_second_sigterm_ends_the_process_at_once",
    "test_no_mixups.py::test_a_sigterm_no_iteration_answers_ends_the_process_after_the_grace",
    "test_no_mixups.py::test_an_unreadable_validation_image_is_skipped_and_the_epoch_is_saved",
    "test_no_mixups.py::test_prepare_own_refuses_a_fifo_named_like_an_image",
    "test_notebook.py::test_missing_retrained_model_and_results_are_skipped_with_a_message",
    "test_notebook.py::test_notebook_runs_and_draws_the_panels_and_the_chart",
    "test_numbers.py::test_a_script_exits_2_naming_the_flag",
    "test_panels.py::test_affinity_panels",
    "test_panels.py::test_rsepm_panels_text_and_hparams",
    "test_panels.py::test_rsepm_without_validation_draws_training_images_each_epoch_and_zero_draws_none",
    "test_panels.py::test_seg_panels",
    "test_preemption.py::test_a_process_ended_by_an_error_or_ctrl_c_does_not_wait_forever_for_its_loader_worker",
    "test_preemption.py::test_ddp_ranks_stop_at_the_same_log_line",
    "test_preemption.py::test_sigterm_mid_epoch_saves_and_the_resumed_run_matches_an_uninterrupted_one",
    "test_preemption.py::test_sigusr1_at_an_epochs_end_stops_after_the_epoch_save",
    "test_prepare_own.py::test_command_line_prints_one_error_line",
    "test_prepare_own.py::test_pipeline_from_the_builder_to_evaluation",
    "test_readme_commands.py::test_readme_command_blocks_run_on_miniature_data",
    "test_readme_commands.py::test_readme_commands_run_unchanged",
    "test_resume_state.py::test_resume_refuses_changed_flags_and_logs_like_an_uninterrupted_run",
    "test_shards.py::test_one_spawned_process_per_device_writes_the_seeds_of_one_process",
    "test_shards.py::test_two_torchrun_ranks_make_the_random_walk_masks_of_one_process",
    "test_shards.py::test_two_torchrun_ranks_write_the_seeds_of_one_process",
    "test_toy_determinism.py::test_two_runs_with_one_seed_give_identical_weights",
    "test_train_affinity.py::test_a_bad_seed_file_stops_the_run_or_is_skipped",
    "test_train_affinity.py::test_no_host_sync_per_iteration",
    "test_train_affinity.py::test_resume_continues_to_the_same_weights",
    "test_train_affinity.py::test_train_convert_evaluate_end_to_end",
    "test_train_rsepm.py::test_resume_mid_epoch_gives_identical_weights",
    "test_train_rsepm.py::test_torchrun_two_processes_train_in_step_and_only_rank0_writes",
    "test_train_rsepm.py::test_training_writes_weights_config_logs_and_feeds_inference",
    "test_train_seg.py::test_gt_label_tag_trains_on_the_ground_truth_masks",
    "test_train_seg.py::test_inference_reads_the_network_from_the_training_record",
    "test_train_seg.py::test_loss_learns_the_masks",
    "test_train_seg.py::test_resume_mid_epoch_gives_identical_weights_and_log",
    "test_train_speed.py::test_training_loop_makes_no_host_sync_per_iteration",
    "test_trainer.py::test_torchrun_two_processes_stay_in_step",
}


SLOW.update(
    {
        "test_train_seg.py::test_training_writes_released_format_and_feeds_inference",
        "test_bad_files.py::test_a_corrupt_training_image_is_skipped_and_counted_by_every_trainer",
        "test_run_warnings.py::test_a_collapsed_run_warns_and_an_untrained_decoder_is_not_the_best",
        "test_inference.py::test_images_that_keep_no_class_are_counted_and_most_of_them_warn",
        "test_time_budget.py::test_disk_rows_by_hand",
        "test_toy_pretrain.py::test_pretrained_file_is_torchvision_layout_loads_and_is_deterministic",
        "test_no_mixups.py::test_every_stage_refuses_a_second_live_writer_and_runs_once_it_is_gone",
        "test_convert_rw.py::test_train_seg_takes_the_rw_masks",
    }
)
# tools/toy/ablation.py end to end (their module fixture trains 4 tiny networks: ~20-35 s)
SLOW.update(
    f"test_toy_ablation.py::{name}"
    for name in (
        "test_rows_are_the_evaluations_and_the_trainings_have_their_flags",
        "test_seeds_table_is_the_mean_and_spread_of_the_runs",
        "test_a_second_run_reuses_the_trained_models",
    )
)
SLOW_FILES = {"test_notebook.py"}  # its module fixture executes the notebook


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = os.path.basename(str(item.fspath))
        if path in SLOW_FILES or f"{path}::{item.originalname or item.name}" in SLOW:
            item.add_marker(pytest.mark.slow)
