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
        **score_params(lambda wc: net_file(wc.run, wc.std)),
    shell:
        SCORE_SHELL


rule score_tensor:
    """One per-tensor variant (phema.per_tensor, Fig. 5b): `tensor` at EMA length `std`, the rest
    at the run's global optimum."""
    input:
        unpack(tensor_score_inputs),
    output:
        TENSOR_SCORE,
    log:
        log_file("score_tensor", "{run}/{guidance}/{tensor}/ema-{std}"),
    benchmark:
        bench_file("score_tensor", "{run}/{guidance}/{tensor}/ema-{std}")
    conda:
        "../envs/eval.yaml"
    threads: rule_threads("score")
    resources:
        **rule_resources("score"),
    params:
        **score_params(lambda wc: tensor_net_file(wc.run, wc.tensor, wc.std, per_tensor_base(wc.run))),
    shell:
        SCORE_SHELL


rule score_at:
    """One EMA length of the grid reconstructed at an earlier training time (phema.at_kimg, Fig. 5c)."""
    input:
        unpack(at_score_inputs),
    output:
        AT_SCORE,
    log:
        log_file("score_at", "{run}/{guidance}/kimg-{kimg}/ema-{std}"),
    benchmark:
        bench_file("score_at", "{run}/{guidance}/kimg-{kimg}/ema-{std}")
    conda:
        "../envs/eval.yaml"
    threads: rule_threads("score")
    resources:
        **rule_resources("score"),
    params:
        **score_params(lambda wc: at_net_file(wc.run, int(wc.kimg), wc.std)),
    shell:
        SCORE_SHELL
