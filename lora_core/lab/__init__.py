"""The lab's workflows, built on the core: the study and its proof, domain tasks, experiments, sweeps, the
LoRA paper's analysis, combined adapters and personal adapters from your own drawings."""
