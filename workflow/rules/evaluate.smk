# Scoring: one job per (run, guidance setting, EMA std). Images are generated on the fly and fed
# to the configured feature detectors over K disjoint seed ranges; the result is one small JSON.
# Metric list, sampler settings and guidance weight are params, so changing them re-scores.


rule score:
    input:
        unpack(score_inputs),
    output:
        SCORE,
    log:
        log_file("score", "{run}/{guidance}/ema-{std}"),
    benchmark:
        bench_file("score", "{run}/{guidance}/ema-{std}")
    conda:
        "../envs/eval.yaml"
    threads: rule_threads("score")
    resources:
        **rule_resources("score"),
    params:
        net=lambda wc: net_file(wc.run, wc.std),
        ref=ref_stats(),
        metrics=lambda wc: ",".join(GUIDANCE[wc.guidance]["metrics"]),
        num=config["score"]["num"],
        seed=config["score"]["seed"],
        ranges=config["score"]["seeds_ranges"],
        steps=config["score"]["steps"],
        batch=config["score"]["batch"],
        guide=score_args,
        eager=sampling_mode_arg(),
        extra=config["score"]["extra_args"],
    shell:
        "python -m edm2 metrics gen --net {params.net:q} {params.guide} --ref {params.ref:q}"
        " --metrics {params.metrics} --num {params.num} --seed {params.seed} --seeds-ranges {params.ranges}"
        " --steps {params.steps} --batch {params.batch} {params.eager} {params.extra} --json {output:q} > {log:q} 2>&1"
