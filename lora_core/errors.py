"""Errors with messages meant for people: the CLI prints them as one line, the dashboard as st.error."""

from __future__ import annotations


class LoraCoreError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(LoraCoreError, ValueError):
    """A hyperparameter or argument is out of range. `field` names the offending setting."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class AdapterExistsError(ConfigError):
    """An adapter of that name is saved already and replacing it was not allowed."""

    def __init__(self, name: str) -> None:
        super().__init__("name", f"an adapter called {name!r} already exists; choose another name or overwrite it")
        self.name = name


class DataError(LoraCoreError):
    """MNIST could not be found, built or verified."""


class ArtifactError(LoraCoreError):
    """A saved model or adapter is missing, malformed or does not fit the base model."""


class NonFiniteOutputs(ArtifactError):
    """The model's outputs are NaN or infinite: its weights (or adapters combined at large weights) overflow, and
    no prediction or accuracy can be read from such outputs."""


class StaleAdapterError(ArtifactError):
    """An adapter was trained on a different base model than the one saved now."""


class ArtifactsBusy(ArtifactError):
    """Another run holds the artifacts folder's writer lock; `holder` says which run and since when."""

    def __init__(self, message: str, holder: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class TrainingDiverged(LoraCoreError):
    """The loss became NaN or infinite; nothing was saved."""


class RunStopped(LoraCoreError):
    """A stop was requested; the run ended early and nothing was saved."""


class ImageError(LoraCoreError):
    """A picture could not be read or is not an image array."""
