# Training: one run per configured model. The run folder name carries a hash of the training
# options ({opts}), so a changed option trains a fresh run instead of resuming an incompatible one.
#
# A job that stops early (SLURM's signal before the time limit, preemption, or the end of a
# `slice`) leaves its checkpoint in the run folder and fails with status 75; Snakemake resubmits
# it (`retries`) and `edm2 train` resumes from the newest training state, until the run reaches
# its duration and writes training-done.json.

import os


rule train:
    input:
        data=training_data(),
    output:
        TRAIN_DONE,
    log:
        log_file("train", "{run}-{opts}"),
    benchmark:
        bench_file("train", "{run}-{opts}")
    retries: train_retries() if workflow.is_main_process else 0
    conda:
        "../envs/train.yaml"
    threads: rule_threads("train")
    resources:
        **train_resources(),
    params:
        launch=lambda wc: train_launch(wc.run),
        outdir=lambda wc, output: os.path.dirname(output[0]),
        options=lambda wc: _train_cli(wc.run),
    shell:
        # The no-op trap keeps this shell alive on SIGTERM until training has written its
        # checkpoint; SLURM signals the training processes themselves.
        "trap : TERM USR1; "
        "{params.launch} --outdir {params.outdir:q} {params.options} >> {log:q} 2>&1; "
        "test -f {output:q} || {{ echo 'slice done, resubmit to continue' >> {log:q}; exit 75; }}"
