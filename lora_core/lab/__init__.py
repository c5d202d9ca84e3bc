"""The lab's workflows, built on the core: the study and its proof, domain tasks, experiments, sweeps, the
LoRA paper's analysis, combined adapters and personal adapters from your own drawings.

Each workflow takes one settings object whole (`ExperimentSettings`, `AnalysisSettings`, `PersonalSettings`;
the core's own are `TrainConfig`, `FinetuneConfig` and `LoraConfig`), turns it into a `FinetuneConfig` through
`run.finetune_config`, and reports progress, stops and measures memory through `run`.
"""
