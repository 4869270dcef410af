"""Loaders for the datasets users bring to ``cloud-controller train``: BIO folders, JSONL, sensor CSV.

Every loader raises :class:`~cloud_controller.datasets.formats.format_errors.DatasetFormatError`
(naming the file and line) on a malformed input; nothing here imports torch.
"""
