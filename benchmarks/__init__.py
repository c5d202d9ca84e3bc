"""Benchmarks for lora_core: speed against a tutorial-style baseline and against the machine's limit.

Run all eight items in one process and print a Markdown table (about 6-8 minutes on 2 quiet cores):

    python -m benchmarks                          # writes benchmarks/latest.json
    python -m benchmarks --markdown benchmarks/RESULTS.md
    python -m benchmarks --quick --json /tmp/b.json   # tiny sizes, 1-2 minutes: checks that it works

Absolute times on a shared machine vary from run to run; the ratios are the claim.
"""
