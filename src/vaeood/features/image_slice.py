"""Which images features are computed on, as one value (:class:`ImageSlice`): a dataset
split, the slice of it, where it is read from and how images of another shape are fitted
to the model. It travels through internal code in place of six loose arguments; the
public functions (:func:`vaeood.features.compute_features`, ...) keep their keywords."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSlice:
    """Images ``[start, stop)`` (or the first ``limit``) of ``dataset/split``, read from
    ``data_dir`` (None: the run's own, or the default search), the bundled sample allowed
    when ``allow_sample``, conformed to the model by ``conform`` (``"pad"``/``"resize"``) if asked, a folder's
    unusable files skipped with ``skip_bad``."""

    dataset: str
    split: str = "test"
    start: int | None = None
    stop: int | None = None
    limit: int | None = None
    data_dir: str | None = None
    allow_sample: bool = False
    conform: str | None = None
    skip_bad: bool = False

    def where(self) -> dict:
        """The keyword arguments of :func:`vaeood.features.compute_features` that name these images."""
        return {"data_dir": self.data_dir, "start": self.start, "stop": self.stop, "limit": self.limit,
                "allow_sample": self.allow_sample, "conform": self.conform, "skip_bad": self.skip_bad}
