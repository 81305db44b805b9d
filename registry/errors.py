"""Registry errors.

RegistryError
 ├── NotFound             a model, site, version, batch or report does not exist
 ├── Conflict             the write contradicts what is stored (duplicate name, unservable version)
 │    └── LeaseLost       the update lease a write depends on is held by another process now
 ├── NotPermitted         the caller may not do this to this record (an approver deciding its own request)
 ├── ArtifactCorrupt      an artifact's bytes no longer match their sha256, or it is missing
 ├── UnreadableRecord     a stored record was written by a newer schema than this code reads, or is damaged
 ├── TargetRefused        a webhook url is not http(s) or its host is not in the allow-list
 ├── InvalidBatch         a pushed batch cannot be used; nothing of it is stored
 │    ├── MalformedBatch  not a readable npz with arrays x and y
 │    ├── BatchMismatch   readable, but shape, dtype, values or labels do not fit the model
 │    └── TooLarge        it declares more data (inflated, samples, pixels) than the limits allow
 ├── StoreUnavailable     Redis or the artifact store cannot be reached (or cannot take writes just now)
 └── StoreRefused         Redis answered a command with an error that retrying will not change: a bug
"""


class RegistryError(Exception):
    """Root of every error the registry raises."""


class NotFound(RegistryError):
    """The named record does not exist."""


class Conflict(RegistryError):
    """The write contradicts the stored state."""


class LeaseLost(Conflict):
    """The update lease protecting a write was taken over; the write did not happen."""


class NotPermitted(RegistryError):
    """The caller is not allowed this action on this record, whatever its token may do elsewhere."""


class ArtifactCorrupt(RegistryError):
    """An artifact is missing or its bytes do not hash to its name."""


class UnreadableRecord(RegistryError):
    """A stored record cannot be read: its schema_version is newer than this code's, or its JSON is damaged."""


class TargetRefused(RegistryError):
    """A webhook target outside the allow-list: subscriptions must not reach internal services."""


class InvalidBatch(RegistryError):
    """A pushed batch was refused; the message says what is wrong and how to fix it."""


class MalformedBatch(InvalidBatch):
    """The bytes are not an npz holding `x` and `y`."""


class BatchMismatch(InvalidBatch):
    """The arrays do not fit the model's input spec (shape, dtype, finite values, label range)."""


class TooLarge(InvalidBatch):
    """The upload declares more than the configured limits; nothing of it was inflated or stored."""


class StoreUnavailable(RegistryError):
    """The backing store (Redis, file system) failed; retrying later may help."""


class StoreRefused(RegistryError):
    """Redis refused a command for good (a wrong key type, a bad argument): a bug to report, not an outage."""
