"""The package's own exception types. The CLI turns any of them into a one-line error."""

import re


class EDM2Error(Exception):
    """Bad input or state that the user can fix; the message names the input and the fix."""


class DataError(EDM2Error):
    """A dataset, image or label file that cannot be used."""


class ConfigError(EDM2Error):
    """Options that contradict each other or the data."""


class FormatError(EDM2Error):
    """A file that is not in a format we can read (or not safely)."""


class DownloadError(EDM2Error):
    """A URL that could not be fetched (offline, not found, ...)."""


class NumericError(EDM2Error):
    """Weights or losses that are not finite numbers (NaN or infinite)."""


class OutputError(EDM2Error):
    """An output that cannot be written (read-only, not a folder, disk full, ...)."""


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KEYS = re.compile(r'"([^"]+)"')
_SIZE_MISMATCH = re.compile(
    r"size mismatch for ([^:]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
    r"the shape in current model is torch\.Size\((\[[^\]]*\])\)"
)


def one_line(text: str, limit: int = 500) -> str:
    """A message from a library, fit for our one-line errors: no object reprs (`<_io.BytesIO
    object at 0x...>`), no advice to load with weights_only=False (only torch's actual reason),
    a state-dict mismatch counted with a few examples instead of every key, one line, at most
    `limit` characters."""
    text = _ANSI.sub("", str(text))
    if "WeightsUnpickler error:" in text:  # torch.load(weights_only=True) refused the file
        reason = text.split("WeightsUnpickler error:", 1)[1].split(". Please use", 1)[0].strip()
        text = f"the file holds objects that are not plain tensors and containers ({reason})"
    elif "Error(s) in loading state_dict" in text:
        text = _summarize_state_dict_error(text)
    text = _OBJECT_REPR.sub("", text)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _summarize_state_dict_error(text: str) -> str:
    parts = []
    for line in text.splitlines():
        line = line.strip()
        for label, prefix in (
            ("missing", "Missing key(s) in state_dict:"),
            ("unexpected", "Unexpected key(s) in state_dict:"),
        ):
            if line.startswith(prefix):
                keys = _KEYS.findall(line)
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    mismatches = _SIZE_MISMATCH.findall(text)
    if mismatches:
        examples = ", ".join(f"{name} {got} vs {want}" for name, got, want in mismatches[:3])
        parts.append(f"{len(mismatches)} of another shape (e.g. {examples})")
    return "the weights do not fit the network: " + "; ".join(parts) if parts else text.splitlines()[0]
