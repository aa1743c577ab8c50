"""``FlashCKAWarning``: its own leaf module, so that every layer (backends included) can
warn with it without importing upwards."""


class FlashCKAWarning(UserWarning):
    """Warnings from flashcka (undefined CKA for a layer, backend fallbacks)."""
