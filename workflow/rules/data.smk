# Data: the demo digits, conversion to the official dataset format, optional SD-VAE latents,
# the small dataset-trained CNN detector (metric fd_cnn) and the reference statistics.

import shlex


rule digits:
    """The embedded demo dataset: scikit-learn's 1,797 handwritten digits as a labelled PNG folder."""
    output:
        directory(DIGITS),
    log:
        log_file("digits"),
    benchmark:
        bench_file("digits")
    conda:
        "../envs/data.yaml"
    threads: rule_threads("digits")
    resources:
        **rule_resources("digits"),
    params:
        resolution=config["data"]["digits_resolution"],
    shell:
        "python -m edm2 dataset digits --dest {output:q} --resolution {params.resolution} > {log:q} 2>&1"


rule convert:
    """Images (folder or ZIP) -> the official dataset ZIP (uncompressed PNGs + dataset.json)."""
    input:
        dataset_source_input(),
    output:
        DATASET_ZIP,
    log:
        log_file("convert"),
    benchmark:
        bench_file("convert")
    conda:
        "../envs/data.yaml"
    threads: rule_threads("convert")
    resources:
        **rule_resources("convert"),
    params:
        source=lambda wc: dataset_source(),
        resolution=lambda wc: f"--resolution {config['data']['resolution']}" if config["data"]["resolution"] else "",
        transform=config["data"]["transform"],
        max_images=lambda wc: f"--max-images {config['data']['max_images']}" if config["data"]["max_images"] else "",
    shell:
        "python -m edm2 dataset convert --source {params.source:q} --dest {output:q} --transform {params.transform}"
        " {params.resolution} {params.max_images} --workers {threads} > {log:q} 2>&1"


rule encode:
    """Pixels -> Stable Diffusion VAE latents (8-channel mean/std NPY per image), for img512."""
    input:
        DATASET_ZIP,
    output:
        LATENTS_ZIP,
    log:
        log_file("encode"),
    benchmark:
        bench_file("encode")
    conda:
        "../envs/vae.yaml"
    threads: rule_threads("encode")
    resources:
        **rule_resources("encode"),
    params:
        vae=config["data"]["vae"],
        batch=config["data"]["encode_batch"],
    shell:
        "python -m edm2 dataset encode --source {input:q} --dest {output:q} --vae {params.vae:q}"
        " --batch {params.batch} > {log:q} 2>&1"


rule train_detector:
    """The small CNN classifier whose penultimate features give the fd_cnn metric."""
    input:
        DATASET_ZIP,
    output:
        DETECTOR,
    log:
        log_file("train_detector"),
    benchmark:
        bench_file("train_detector")
    conda:
        "../envs/eval.yaml"
    threads: rule_threads("train_detector")
    resources:
        **rule_resources("train_detector"),
    params:
        epochs=config["detector"]["epochs"],
        batch=config["detector"]["batch"],
        seed=config["detector"]["seed"],
        extra=config["detector"]["extra_args"],
    shell:
        "python -m edm2 metrics train-detector --data {input:q} --dest {output:q} --epochs {params.epochs}"
        " --batch {params.batch} --seed {params.seed} {params.extra} > {log:q} 2>&1"


rule ref_stats:
    """Feature statistics of the whole dataset for every configured metric."""
    input:
        data=DATASET_ZIP,
        detector=DETECTOR if uses_cnn_detector() else [],
    output:
        REF_STATS,
    log:
        log_file("ref_stats"),
    benchmark:
        bench_file("ref_stats")
    conda:
        "../envs/eval.yaml"
    threads: rule_threads("ref_stats")
    resources:
        **rule_resources("ref_stats"),
    params:
        metrics=",".join(METRICS),
        detector=lambda wc, input: f"--cnn-detector {shlex.quote(input.detector)}" if input.detector else "",
        workers=config["data"]["workers"],
    shell:
        "python -m edm2 metrics ref --data {input.data:q} --dest {output:q} --metrics {params.metrics}"
        " {params.detector} --workers {params.workers} > {log:q} 2>&1"
