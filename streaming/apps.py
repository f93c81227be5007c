from django.apps import AppConfig


class StreamingConfig(AppConfig):
    name = "streaming"
    verbose_name = "Streaming chat"

    def ready(self) -> None:
        """Register system checks and the settings-change hook once the app registry is ready."""
        from . import checks, runtime  # noqa: F401
