"""Typed errors and warnings shared by every layer of labo.

Every error names the argument, what was received and what was expected. Each
subclasses the matching built-in (``ValueError``, ``TypeError``) so generic
``except ValueError`` handlers keep working.
"""


class LaboError(Exception):
    """Base class of every error raised by labo."""


class InputShapeError(LaboError, ValueError):
    """An input tensor has the wrong number of dimensions or mismatched sizes."""


class NonFiniteInputError(LaboError, ValueError):
    """An input tensor contains NaN or infinite values."""


class EmptyDataError(LaboError, ValueError):
    """A data set has no rows."""


class InputDtypeError(LaboError, TypeError):
    """An input tensor has the wrong dtype (or a dtype that differs from the network's)."""


class LabelError(LaboError, ValueError):
    """Classification labels are not integers in ``[0, K)``."""


class LikelihoodError(LaboError, ValueError):
    """The likelihood is not one labo knows, or an option was given for the wrong likelihood."""


class HyperparameterError(LaboError, ValueError):
    """A prior precision or noise level is non-positive, non-finite or badly shaped."""


class WeightSubsetError(LaboError, ValueError):
    """A weight subset does not fit the network (unknown names, wrong mask shapes...)."""


class NetworkError(LaboError, ValueError):
    """A built-in network's option (its number of features, their kind) is invalid."""


class StructureError(LaboError, ValueError):
    """A posterior structure cannot represent the requested weight subset."""


class NotFittedError(LaboError, RuntimeError):
    """A posterior was used before its curvature was computed."""


class NumericalError(LaboError, RuntimeError):
    """A factorisation failed even after the documented jitter rule."""


class NumericalWarning(UserWarning):
    """Numerical trouble was repaired (jitter added, eigenvalues clamped)."""


class BenchmarkError(LaboError, ValueError):
    """A BO run or benchmark was configured badly (bounds, budget, problem or method names)."""


class ObjectiveImportError(LaboError, ImportError):
    """A user objective given as ``MODULE:FUNCTION`` cannot be imported or is not callable."""


class StudyError(LaboError, ValueError):
    """A study store cannot be opened, or a study exists/is missing/does not match on resume."""
