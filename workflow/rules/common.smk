# The plain Python every rule builds on, by concern (Snakemake keeps functions out of the rule
# files: rules/<stage>.smk holds the rules of a stage, rules/common/<stage>.smk its helpers).
# Evaluated when the DAG is built, in this order: each file uses only those before it.
#
#   common/config.smk     the config, validated; models, guidance, EMA grid, run-folder hashes
#   common/paths.smk      every output as one named pattern, shared by its rule and its readers
#   common/resources.smk  threads and resources of every rule, the sampling mode (several stages)
#   common/<stage>.smk    the input functions, parameters and settings of rules/<stage>.smk


include: "common/config.smk"
include: "common/paths.smk"
include: "common/resources.smk"
include: "common/data.smk"
include: "common/train.smk"
include: "common/phema.smk"
include: "common/evaluate.smk"
include: "common/report.smk"
include: "common/magnitudes.smk"
include: "common/released.smk"
