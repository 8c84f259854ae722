# The 2-D toy example of autoguidance (Karras et al. 2024, arXiv 2406.02507, Sec. 3 and Fig. 1;
# `edm2 toy`, docs/evaluation.md#the-2-d-toy-example): trained and drawn on the CPU when the
# config's `toy.enabled` is set (the demo sets it), independent of every other job.


rule toy:
    """Train the toy's main model and guides, sample without guidance, with CFG and with
    autoguidance, and draw the paper-style figure; its measures (log-density of the samples under
    the true distribution, fraction on the branches) go to a JSON beside it."""
    output:
        plot=report(TOY_PLOT, caption="../report/toy.rst", category="Plots", subcategory="Guidance"),
        json=TOY_JSON,
    log:
        log_file("toy"),
    benchmark:
        bench_file("toy")
    conda:
        "../envs/train.yaml"
    threads: rule_threads("toy")
    resources:
        **rule_resources("toy"),
    params:
        extra=toy_args(),
    shell:
        "python -m edm2 toy --out {output.plot:q} --json {output.json:q} {params.extra} > {log:q} 2>&1"
