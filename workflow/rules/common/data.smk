# Helpers of the data rules (rules/data.smk): the images `convert` reads, and whether the CNN
# detector is needed.


def dataset_source():
    """The images `convert` reads: the demo digits, or data.source (a folder, ZIP or path)."""
    src = config["data"]["source"]
    return DIGITS if src == "digits" else src


def dataset_source_input():
    """The demo digits are made by a rule; an external dataset (e.g. ImageNet) is read by
    `convert` only, so a dry-run works on a machine that does not hold it."""
    return DIGITS if config["data"]["source"] == "digits" else []


def uses_cnn_detector():
    return "fd_cnn" in METRICS
